/* TCP_NODELAY on every socket devkafka accepts, as a real Kafka broker sets on its
 * connections. librdkafka's mock cluster leaves Nagle on, so a mock broker's second small
 * response waits for the client's delayed ACK (up to 40 ms on Linux), and any produce that
 * spans several partitions of one broker pays it: a dev-stack artifact that would distort
 * every latency measured against devkafka.
 *
 * The mock cluster accepts inside librdkafka, out of our reach, so this file interposes
 * accept() and accept4(): a definition in the executable comes first in the dynamic symbol
 * lookup, including for calls made from librdkafka.so. The real functions are found with
 * dlsym(RTLD_NEXT). */
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

static void set_nodelay(int fd) {
  if (fd >= 0) {
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* ENOTSUP off TCP: fine */
  }
}

int accept(int s, struct sockaddr *addr, socklen_t *len) {
  static int (*real)(int, struct sockaddr *, socklen_t *);
  if (!real)
    real = (int (*)(int, struct sockaddr *, socklen_t *))dlsym(RTLD_NEXT, "accept");
  int fd = real(s, addr, len);
  set_nodelay(fd);
  return fd;
}

int accept4(int s, struct sockaddr *addr, socklen_t *len, int flags) {
  static int (*real)(int, struct sockaddr *, socklen_t *, int);
  if (!real)
    real = (int (*)(int, struct sockaddr *, socklen_t *, int))dlsym(RTLD_NEXT, "accept4");
  int fd = real(s, addr, len, flags);
  set_nodelay(fd);
  return fd;
}
