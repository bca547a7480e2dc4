/* relay_nodelay.so: an LD_PRELOAD shim that bench/relay.sh puts under baton-devkafka. It sets
 * TCP_NODELAY on every accepted socket, as a real Kafka broker does on its connections
 * (Kafka's acceptor always disables Nagle). librdkafka's mock cluster, which devkafka runs,
 * leaves Nagle on: a broker's second small response then waits for the client's delayed ACK,
 * up to 40 ms on Linux, and every produce that spans more than two partitions of one broker
 * pays it. Without the shim the benchmark measures that artifact of the dev stack instead of
 * the relay; relay.sh can run without it (BENCH_RELAY_DEVKAFKA_NODELAY=0) to show both. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

static void nodelay(int fd) {
  if (fd >= 0) {
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* fails harmlessly on non-TCP */
  }
}

int accept(int s, struct sockaddr *addr, socklen_t *len) {
  static int (*real)(int, struct sockaddr *, socklen_t *);
  if (!real)
    real = (int (*)(int, struct sockaddr *, socklen_t *))dlsym(RTLD_NEXT, "accept");
  int fd = real(s, addr, len);
  nodelay(fd);
  return fd;
}

int accept4(int s, struct sockaddr *addr, socklen_t *len, int flags) {
  static int (*real)(int, struct sockaddr *, socklen_t *, int);
  if (!real)
    real = (int (*)(int, struct sockaddr *, socklen_t *, int))dlsym(RTLD_NEXT, "accept4");
  int fd = real(s, addr, len, flags);
  nodelay(fd);
  return fd;
}
