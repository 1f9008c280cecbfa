// SPDX-License-Identifier: MIT
//
// af-packet-net: Ethernet frames through the kernel's virtio-net (a vdpa net device bound to virtio_vdpa)
// with an AF_PACKET socket on its interface. Two jobs:
//
//   af-packet-net echo --ifname IF --count N [--dst MAC] [--first SEQ] [--max-size BYTES] [--window N]
//                      [--timeout-ms MS]
//     Sends N frames of sizes 60 … max-size (default 1514) with random payloads and sequence numbers (the
//     generator of test/device/net-frames.ts, so either side can recompute frame SEQ), keeping at most
//     --window (default 32) unanswered, and checks what comes back byte for byte. Waits --timeout-ms
//     (default 1000) after the last frame for stragglers. Prints {sent, received, corrupt, lost, unexpected,
//     out_of_order} as JSON; exit 0 even when frames were lost (the caller judges).
//
//   af-packet-net bench --ifname IF [--size BYTES] [--batch N] [--seconds S] [--ramp S]
//     The benchmark's kernel engine: batches of --batch broadcast frames (sendmmsg), then received until the
//     batch is back (recvmmsg; a frame not back within 100 ms counts as lost). Prints {frames_per_s,
//     gbit_per_s, frames, lost, cpu_us_per_frame, ...} as JSON.
//
// The socket is bound to EtherType 0x88b5 on IF and ignores its own outgoing frames (PACKET_IGNORE_OUTGOING),
// so it sees only what the device looped back. Needs root (CAP_NET_RAW). Why C and not python3's
// socket.AF_PACKET: the lab guest runs the host's userland, where python3 is not guaranteed (this host's is a
// pyenv shim under /root), and the benchmark needs a sender whose own cost is small next to the kernel's.
//
// Build: gcc -O2 -Wall -Wextra -std=gnu11 -o af-packet-net af-packet-net.c
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef PACKET_IGNORE_OUTGOING
#define PACKET_IGNORE_OUTGOING 23
#endif

#define ETHERTYPE_TEST 0x88b5
#define MAX_FRAME 1514
#define MIN_FRAME 60
#define MAX_BATCH 256

static const uint8_t SOURCE[6] = {0x52, 0x54, 0xaa, 0xbb, 0xcc, 0x99};

static void die(const char* fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void die(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "af-packet-net: ");
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(1);
}

static void usage_error(const char* msg, const char* arg) __attribute__((noreturn));
static void usage_error(const char* msg, const char* arg) {
  fprintf(stderr, "af-packet-net: %s%s\n(see the comment at the top of af-packet-net.c for usage)\n", msg,
          arg ? arg : "");
  exit(2);
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static uint64_t cpu_us(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000ULL +
         (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

// Frame `seq` of test/device/net-frames.ts: xorshift32 seeded by seq picks the size, then the payload.
static unsigned frame_of(uint32_t seq, const uint8_t dst[6], unsigned max_size, uint8_t* out) {
  uint32_t x = (uint32_t)((uint64_t)seq * 2654435761ULL + 1);
  if (x == 0) x = 1;
#define NEXT() (x ^= x << 13, x ^= x >> 17, x ^= x << 5, x)
  unsigned size = MIN_FRAME + NEXT() % (max_size - MIN_FRAME + 1);
  memcpy(out, dst, 6);
  memcpy(out + 6, SOURCE, 6);
  out[12] = ETHERTYPE_TEST >> 8;
  out[13] = ETHERTYPE_TEST & 0xff;
  out[14] = (uint8_t)(seq >> 24);
  out[15] = (uint8_t)(seq >> 16);
  out[16] = (uint8_t)(seq >> 8);
  out[17] = (uint8_t)seq;
  for (unsigned i = 18; i < size; i++) out[i] = (uint8_t)(NEXT() & 0xff);
#undef NEXT
  return size;
}

static void parse_mac(const char* s, uint8_t mac[6]) {
  unsigned b[6];
  char tail;
  if (sscanf(s, "%2x:%2x:%2x:%2x:%2x:%2x%c", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5], &tail) != 6)
    usage_error("not a MAC address: ", s);
  for (int i = 0; i < 6; i++) mac[i] = (uint8_t)b[i];
}

static double parse_number(const char* name, const char* s, double min, double max) {
  char* end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || end == s || *end || !(v >= min && v <= max)) usage_error(name, s);
  return v;
}

static int open_socket(const char* ifname) {
  int fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETHERTYPE_TEST));
  if (fd < 0) die("socket(AF_PACKET): %s", strerror(errno));
  unsigned ifindex = if_nametoindex(ifname);
  if (ifindex == 0) die("no interface %s: %s", ifname, strerror(errno));
  struct sockaddr_ll sll = {
      .sll_family = AF_PACKET, .sll_protocol = htons(ETHERTYPE_TEST), .sll_ifindex = (int)ifindex};
  if (bind(fd, (struct sockaddr*)&sll, sizeof sll) < 0) die("bind to %s: %s", ifname, strerror(errno));
  int one = 1;
  if (setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one) < 0)
    die("PACKET_IGNORE_OUTGOING: %s", strerror(errno));
  int buf = 8 << 20;
  (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &buf, sizeof buf);
  (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &buf, sizeof buf);
  return fd;
}

// Receives one frame if one arrives within timeout_ms; returns its length, or -1 on timeout.
static ssize_t recv_frame(int fd, uint8_t* buf, size_t cap, int timeout_ms) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  for (;;) {
    ssize_t n = recv(fd, buf, cap, MSG_DONTWAIT | MSG_TRUNC);
    if (n >= 0) return n;
    if (errno != EAGAIN && errno != EINTR) die("recv: %s", strerror(errno));
    int r = poll(&p, 1, timeout_ms);
    if (r < 0 && errno != EINTR) die("poll: %s", strerror(errno));
    if (r == 0) return -1;
  }
}

static void send_frame(int fd, const uint8_t* frame, size_t len) {
  for (;;) {
    ssize_t n = send(fd, frame, len, 0);
    if (n == (ssize_t)len) return;
    // ENOBUFS: the qdisc or the device's TX ring is full right now; try again shortly.
    if (n < 0 && (errno == ENOBUFS || errno == EAGAIN || errno == EINTR)) {
      usleep(100);
      continue;
    }
    die("send of %zu bytes: %s", len, n < 0 ? strerror(errno) : "short write");
  }
}

static int cmd_echo(int argc, char** argv) {
  const char* ifname = NULL;
  uint8_t dst[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
  unsigned count = 1000, max_size = MAX_FRAME, window = 32;
  uint32_t first = 0;
  int timeout_ms = 1000;
  static const struct option longopts[] = {
      {"ifname", required_argument, 0, 'i'},     {"count", required_argument, 0, 'c'},
      {"dst", required_argument, 0, 'd'},        {"first", required_argument, 0, 'f'},
      {"max-size", required_argument, 0, 'm'},   {"window", required_argument, 0, 'w'},
      {"timeout-ms", required_argument, 0, 't'}, {0, 0, 0, 0}};
  int c;
  opterr = 0;
  while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    switch (c) {
      case 'i':
        ifname = optarg;
        break;
      case 'c':
        count = (unsigned)parse_number("--count: ", optarg, 1, 1e9);
        break;
      case 'd':
        parse_mac(optarg, dst);
        break;
      case 'f':
        first = (uint32_t)parse_number("--first: ", optarg, 0, 4e9);
        break;
      case 'm':
        max_size = (unsigned)parse_number("--max-size: ", optarg, MIN_FRAME, MAX_FRAME);
        break;
      case 'w':
        window = (unsigned)parse_number("--window: ", optarg, 1, 4096);
        break;
      case 't':
        timeout_ms = (int)parse_number("--timeout-ms: ", optarg, 1, 600000);
        break;
      default:
        usage_error("unknown or incomplete option ", argv[optind - 1]);
    }
  }
  if (!ifname) usage_error("--ifname is required", NULL);
  int fd = open_socket(ifname);
  uint8_t* seen = calloc(count, 1);
  if (!seen) die("out of memory");
  uint8_t out[MAX_FRAME], expect[MAX_FRAME], in[65536];
  uint64_t sent = 0, received = 0, corrupt = 0, unexpected = 0, out_of_order = 0;
  uint32_t next_expected = first;
  while (sent < count || received + corrupt < sent) {
    bool can_send = sent < count && sent - (received + corrupt) < window;
    if (can_send) {
      unsigned len = frame_of(first + (uint32_t)sent, dst, max_size, out);
      send_frame(fd, out, len);
      sent++;
      continue;
    }
    ssize_t n = recv_frame(fd, in, sizeof in, timeout_ms);
    if (n < 0) break;  // nothing for timeout_ms: the rest is lost
    if (n < 18) {
      unexpected++;
      continue;
    }
    uint32_t seq = (uint32_t)in[14] << 24 | (uint32_t)in[15] << 16 | (uint32_t)in[16] << 8 | in[17];
    if (seq - first >= count || seen[seq - first]) {
      unexpected++;
      continue;
    }
    seen[seq - first] = 1;
    if (seq != next_expected) out_of_order++;
    next_expected = seq + 1;
    unsigned len = frame_of(seq, dst, max_size, expect);
    if ((size_t)n == len && memcmp(in, expect, len) == 0)
      received++;
    else
      corrupt++;
  }
  // Anything arriving late is unexpected (the frames were counted as lost).
  ssize_t n;
  while ((n = recv_frame(fd, in, sizeof in, 50)) >= 0) unexpected++;
  printf("{\"sent\":%" PRIu64 ",\"received\":%" PRIu64 ",\"corrupt\":%" PRIu64 ",\"lost\":%" PRIu64
         ",\"unexpected\":%" PRIu64 ",\"out_of_order\":%" PRIu64 "}\n",
         sent, received, corrupt, sent - received - corrupt, unexpected, out_of_order);
  free(seen);
  close(fd);
  return 0;
}

static int cmd_bench(int argc, char** argv) {
  const char* ifname = NULL;
  unsigned size = 64, batch = 32;
  double seconds = 10, ramp = 0;
  static const struct option longopts[] = {
      {"ifname", required_argument, 0, 'i'}, {"size", required_argument, 0, 'z'},
      {"batch", required_argument, 0, 'b'},  {"seconds", required_argument, 0, 's'},
      {"ramp", required_argument, 0, 'R'},   {0, 0, 0, 0}};
  int c;
  opterr = 0;
  while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    switch (c) {
      case 'i':
        ifname = optarg;
        break;
      case 'z':
        size = (unsigned)parse_number("--size: ", optarg, MIN_FRAME, MAX_FRAME);
        break;
      case 'b':
        batch = (unsigned)parse_number("--batch: ", optarg, 1, MAX_BATCH);
        break;
      case 's':
        seconds = parse_number("--seconds: ", optarg, 0.001, 86400);
        break;
      case 'R':
        ramp = parse_number("--ramp: ", optarg, 0, 3600);
        break;
      default:
        usage_error("unknown or incomplete option ", argv[optind - 1]);
    }
  }
  if (!ifname) usage_error("--ifname is required", NULL);
  int fd = open_socket(ifname);
  static uint8_t frames[MAX_BATCH][MAX_FRAME];
  static uint8_t rx[MAX_BATCH][2048];
  struct mmsghdr tx_msgs[MAX_BATCH], rx_msgs[MAX_BATCH];
  struct iovec tx_iov[MAX_BATCH], rx_iov[MAX_BATCH];
  for (unsigned i = 0; i < batch; i++) {
    memset(frames[i], 0xff, 6);
    memcpy(frames[i] + 6, SOURCE, 6);
    frames[i][12] = ETHERTYPE_TEST >> 8;
    frames[i][13] = ETHERTYPE_TEST & 0xff;
    for (unsigned k = 18; k < size; k++) frames[i][k] = (uint8_t)(k * 7);
    tx_iov[i] = (struct iovec){frames[i], size};
    rx_iov[i] = (struct iovec){rx[i], sizeof rx[i]};
  }
  uint64_t sent = 0, received = 0, bad = 0;
  uint32_t seq = 0;
  const uint64_t from = now_ns() + (uint64_t)(ramp * 1e9);
  const uint64_t until = from + (uint64_t)(seconds * 1e9);
  uint64_t start = 0, cpu0 = 0, recv0 = 0, sent0 = 0, end;
  while ((end = now_ns()) < until) {
    if (start == 0 && end >= from) {
      start = end;
      cpu0 = cpu_us();
      recv0 = received;
      sent0 = sent;
    }
    for (unsigned i = 0; i < batch; i++) {
      uint32_t s = seq++;
      frames[i][14] = (uint8_t)(s >> 24);
      frames[i][15] = (uint8_t)(s >> 16);
      frames[i][16] = (uint8_t)(s >> 8);
      frames[i][17] = (uint8_t)s;
      memset(&tx_msgs[i], 0, sizeof tx_msgs[i]);
      tx_msgs[i].msg_hdr.msg_iov = &tx_iov[i];
      tx_msgs[i].msg_hdr.msg_iovlen = 1;
    }
    unsigned done = 0;
    while (done < batch) {
      int n = sendmmsg(fd, tx_msgs + done, batch - done, 0);
      if (n < 0) {
        if (errno == ENOBUFS || errno == EAGAIN || errno == EINTR) {
          usleep(50);
          continue;
        }
        die("sendmmsg: %s", strerror(errno));
      }
      done += (unsigned)n;
    }
    sent += batch;
    unsigned got = 0;
    while (got < batch) {
      for (unsigned i = 0; i < batch - got; i++) {
        memset(&rx_msgs[i], 0, sizeof rx_msgs[i]);
        rx_msgs[i].msg_hdr.msg_iov = &rx_iov[i];
        rx_msgs[i].msg_hdr.msg_iovlen = 1;
      }
      struct timespec timeout = {0, 100000000};  // 100 ms: anything later is lost
      int n = recvmmsg(fd, rx_msgs, batch - got, MSG_WAITFORONE, &timeout);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) break;
      if (n < 0) die("recvmmsg: %s", strerror(errno));
      if (n == 0) break;
      for (int i = 0; i < n; i++)
        if (rx_msgs[i].msg_len != size) bad++;
      got += (unsigned)n;
      received += (unsigned)n;
      // recvmmsg's timeout is checked only after a datagram arrives: poll for the rest instead.
      if (got < batch) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 100) == 0) break;
      }
    }
  }
  const uint64_t cpu1 = cpu_us();
  if (start == 0) die("the measured interval never started");
  const uint64_t frames_n = received - recv0;
  const double secs = (double)(end - start) / 1e9;
  printf(
      "{\"engine\":\"kernel\",\"mode\":\"af_packet\",\"size\":%u,\"batch\":%u,\"seconds\":%.3f,\"sent\":"
      "%" PRIu64 ",\"frames\":%" PRIu64 ",\"frames_per_s\":%.1f,\"gbit_per_s\":%.4f,\"lost\":%" PRIu64
      ",\"bad_length\":%" PRIu64 ",\"cpu_us_per_frame\":%.3f}\n",
      size, batch, secs, sent - sent0, frames_n, (double)frames_n / secs,
      (double)frames_n * size * 8 / secs / 1e9, sent - received, bad,
      frames_n ? (double)(cpu1 - cpu0) / (double)frames_n : 0.0);
  close(fd);
  return bad ? 1 : 0;
}

int main(int argc, char** argv) {
  if (argc < 2) usage_error("expected a command: echo or bench", NULL);
  if (strcmp(argv[1], "echo") == 0) return cmd_echo(argc - 1, argv + 1);
  if (strcmp(argv[1], "bench") == 0) return cmd_bench(argc - 1, argv + 1);
  usage_error("unknown command ", argv[1]);
}
