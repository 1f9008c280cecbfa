// faulty-blk: a RAM-backed virtio-blk device served through VDUSE that misbehaves on request.
//
// The device suite uses it to check what the driver does when a device breaks the virtio rules (a used id
// that is not in flight, a duplicate completion, a used length larger than the chain, I/O errors, a request
// that never completes, a capacity change, a slow device, a daemon that dies). Without --fault it is a
// correct split-ring virtio-blk device. Written from the VDUSE uAPI (include/uapi/linux/vduse.h, API version
// 0, Linux 6.12) and /work/shared/docs/vdpa-facts-next.md section C; see docs/hostile.md.
//
// One thread, one poll() loop: control messages on /dev/vduse/NAME (always answered, whatever the fault), one
// kick eventfd per started queue, a timerfd for delayed completions (--fault slow:MS) and a signalfd for
// SIGTERM/SIGINT. Requests are numbered from 1 over the daemon's life (across device resets); a fault names
// the request it hits.
//
// Lifecycle (the harness in test/device/fault-device.ts does this):
//   faulty-blk --name N ...   CREATE_DEV, VQ_SETUP for every queue, msg_timeout, --ready-file, then serve
//   vdpa dev add name N mgmtdev vduse      (messages arrive while attaching: they are served)
//   ... the driver opens /dev/vhost-vdpa-K ...
//   vdpa dev del N            (the daemon must still be serving: the kernel resets the device)
//   kill -TERM <pid>          the daemon closes /dev/vduse/N and destroys the device (DESTROY_DEV)
// After a SIGKILL the VDUSE device outlives the daemon; `faulty-blk --destroy N` removes it once the vdpa
// device is deleted.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/vduse.h>
#include <linux/virtio_blk.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ids.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define SECTOR 512u
#define MAX_QUEUES 16
#define MAX_QUEUE_SIZE 1024
#define MAX_FAULTS 32
#define MAX_MAPPINGS 64
#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2
#define VRING_DESC_F_INDIRECT 4
#define BLK_HEADER_BYTES 16
#define BLK_ID_BYTES 20

enum fault_kind { F_BAD_ID, F_NOT_HEAD, F_DUP, F_BAD_LEN, F_IOERR_EVERY, F_STALL, F_SLOW, F_RESIZE };
static const char *const fault_names[] = {"bad-id",      "not-head", "dup",  "bad-len",
                                          "ioerr-every", "stall",    "slow", "resize"};

struct fault {
  enum fault_kind kind;
  uint64_t n;      // request number (every Nth for ioerr-every, ms for slow)
  uint64_t bytes;  // resize
};

struct mapping {
  uint64_t start, last;  // IOVA range
  uint8_t *base;         // host address of `start`
  void *map;
  size_t map_len;
  uint8_t perm;
};

struct vq {
  bool started;
  uint32_t num;
  uint64_t desc, avail, used;  // IOVAs
  uint16_t last_avail, used_idx;
  int kickfd;
  bool irq_pending;
  uint64_t requests;
};

// A completion waiting to be published: at once, or after --fault slow:MS.
struct completion {
  uint32_t q;
  uint16_t head, second;
  uint32_t len, writable;
  uint64_t reqno, due_ms, generation;
};

struct seg {
  uint64_t addr;
  uint32_t len;
  bool write;
};

static struct {
  const char *name;
  uint64_t size;
  uint32_t queues, queue_size;
  int msg_timeout;  // -1: leave the default
  const char *ready_file;
  bool fill_sectors;  // --fill sectors: every 8 bytes of sector S hold S (little-endian), so any read is
                      // predictable
  struct fault faults[MAX_FAULTS];
  int nfaults;
  uint64_t slow_ms;
} opt = {.size = 64u << 20, .queues = 1, .queue_size = 256, .msg_timeout = -1};

static struct {
  int devfd;
  uint8_t status;
  uint8_t *disk;
  uint64_t capacity_bytes;
  struct virtio_blk_config config;
  struct vq vqs[MAX_QUEUES];
  struct mapping maps[MAX_MAPPINGS];
  int nmaps;
  uint64_t reqno;       // requests seen over the daemon's life
  uint64_t generation;  // bumped by every reset: completions of an older generation are dropped
  struct completion *deferred;
  size_t deferred_head, deferred_count, deferred_cap;
  int timerfd;
  bool broken;
  uint64_t resize_pending;  // bytes; 0 = none
  uint64_t faults_applied, bad_chains;
} dev = {.devfd = -1, .timerfd = -1};

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...) {
  char line[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  fprintf(stderr, "faulty-blk[%s]: %s\n", opt.name ? opt.name : "?", line);
}

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static bool fault_at(enum fault_kind kind, uint64_t reqno, uint64_t *bytes) {
  for (int i = 0; i < opt.nfaults; i++) {
    const struct fault *f = &opt.faults[i];
    if (f->kind != kind) continue;
    bool hit = kind == F_IOERR_EVERY ? reqno % f->n == 0 : reqno == f->n;
    if (hit) {
      if (bytes) *bytes = f->bytes;
      return true;
    }
  }
  return false;
}

// ---- IOVA → host memory
// ---------------------------------------------------------------------------------------

static void unmap_all(void) {
  for (int i = 0; i < dev.nmaps; i++) munmap(dev.maps[i].map, dev.maps[i].map_len);
  dev.nmaps = 0;
}

// Maps the driver's memory that holds `iova` with IOTLB_GET_FD (the kernel hands us the file behind the
// driver's mapping and the offset of the IOTLB entry in it).
static struct mapping *map_iova(uint64_t iova) {
  for (int i = 0; i < dev.nmaps; i++)
    if (dev.maps[i].start <= iova && iova <= dev.maps[i].last) return &dev.maps[i];
  if (dev.nmaps == MAX_MAPPINGS) unmap_all();
  struct vduse_iotlb_entry entry = {.start = iova, .last = iova};
  int fd = ioctl(dev.devfd, VDUSE_IOTLB_GET_FD, &entry);
  if (fd < 0) return NULL;
  long page = sysconf(_SC_PAGESIZE);
  uint64_t aligned = entry.offset & ~(uint64_t)(page - 1);
  uint64_t delta = entry.offset - aligned;
  size_t len = (size_t)(entry.last - entry.start + 1 + delta);
  int prot = (entry.perm & VDUSE_ACCESS_RO ? PROT_READ : 0) | (entry.perm & VDUSE_ACCESS_WO ? PROT_WRITE : 0);
  void *map = mmap(NULL, len, prot ? prot : PROT_READ, MAP_SHARED, fd, (off_t)aligned);
  close(fd);
  if (map == MAP_FAILED) {
    say("mmap of IOVA [0x%" PRIx64 ", 0x%" PRIx64 "] failed: %s", (uint64_t)entry.start, (uint64_t)entry.last,
        strerror(errno));
    return NULL;
  }
  struct mapping *m = &dev.maps[dev.nmaps++];
  *m = (struct mapping){entry.start, entry.last, (uint8_t *)map + delta, map, len, entry.perm};
  return m;
}

// Host pointer for [iova, iova+len) as far as it is contiguous (*contig bytes), or NULL if unmapped or the
// permission is missing.
static uint8_t *iova_ptr(uint64_t iova, uint64_t len, bool write, uint64_t *contig) {
  struct mapping *m = map_iova(iova);
  if (!m || !(m->perm & (write ? VDUSE_ACCESS_WO : VDUSE_ACCESS_RO))) return NULL;
  uint64_t room = m->last - iova + 1;  // never 0: iova <= last
  *contig = len < room ? len : room;
  return m->base + (iova - m->start);
}

static bool guest_read(void *dst, uint64_t iova, uint64_t len) {
  uint8_t *out = dst;
  while (len > 0) {
    uint64_t n;
    uint8_t *p = iova_ptr(iova, len, false, &n);
    if (!p) return false;
    memcpy(out, p, n);
    out += n, iova += n, len -= n;
  }
  return true;
}

static bool guest_write(uint64_t iova, const void *src, uint64_t len) {
  const uint8_t *in = src;
  while (len > 0) {
    uint64_t n;
    uint8_t *p = iova_ptr(iova, len, true, &n);
    if (!p) return false;
    memcpy(p, in, n);
    in += n, iova += n, len -= n;
  }
  return true;
}

// A naturally aligned 16-bit ring field (never split across mappings).
static uint16_t *ring_u16(uint64_t iova, bool write) {
  uint64_t n;
  uint8_t *p = iova_ptr(iova, 2, write, &n);
  return p && n == 2 ? (uint16_t *)p : NULL;
}

// ---- split ring
// -----------------------------------------------------------------------------------------------

static void used_push(struct vq *vq, uint32_t q, uint32_t id, uint32_t len) {
  struct {
    uint32_t id, len;
  } elem = {id, len};
  if (!guest_write(vq->used + 4 + 8 * (uint64_t)(vq->used_idx % vq->num), &elem, sizeof elem)) {
    say("queue %u: used ring at 0x%" PRIx64 " is not mapped writable", q, vq->used);
    return;
  }
  vq->used_idx++;
  vq->irq_pending = true;
}

// Publishes the used index (release: the elements and the data are visible first), then interrupts.
static void flush_used(uint32_t q) {
  struct vq *vq = &dev.vqs[q];
  if (!vq->started || !vq->irq_pending) return;
  vq->irq_pending = false;
  uint16_t *idx = ring_u16(vq->used + 2, true);
  if (!idx) {
    say("queue %u: used index not mapped", q);
    return;
  }
  __atomic_store_n(idx, vq->used_idx, __ATOMIC_RELEASE);
  if (ioctl(dev.devfd, VDUSE_VQ_INJECT_IRQ, &q) < 0) say("queue %u: VQ_INJECT_IRQ: %s", q, strerror(errno));
}

// Copies between the disk and the bytes of one direction of a chain, starting `skip` bytes into that
// direction.
static bool chain_copy(const struct seg *segs, int count, bool write, uint64_t skip, uint8_t *disk,
                       uint64_t len) {
  for (int i = 0; i < count && len > 0; i++) {
    if (segs[i].write != write) continue;
    if (skip >= segs[i].len) {
      skip -= segs[i].len;
      continue;
    }
    uint64_t n = segs[i].len - skip;
    if (n > len) n = len;
    bool ok = write ? guest_write(segs[i].addr + skip, disk, n) : guest_read(disk, segs[i].addr + skip, n);
    if (!ok) return false;
    disk += n, len -= n, skip = 0;
  }
  return len == 0;
}

static void publish(const struct completion *c);

static void complete_later_or_now(struct completion *c) {
  if (opt.slow_ms == 0) {
    publish(c);
    return;
  }
  if (dev.deferred_count == dev.deferred_cap) {
    size_t cap = dev.deferred_cap ? dev.deferred_cap * 2 : 256;
    struct completion *grown = calloc(cap, sizeof *grown);
    if (!grown) {
      say("out of memory for delayed completions: completing at once");
      publish(c);
      return;
    }
    for (size_t i = 0; i < dev.deferred_count; i++)
      grown[i] = dev.deferred[(dev.deferred_head + i) % dev.deferred_cap];
    free(dev.deferred);
    dev.deferred = grown, dev.deferred_cap = cap, dev.deferred_head = 0;
  }
  c->due_ms = now_ms() + opt.slow_ms;
  say("request %" PRIu64 " queue %u: slow: completing in %" PRIu64 " ms", c->reqno, c->q, opt.slow_ms);
  dev.deferred[(dev.deferred_head + dev.deferred_count++) % dev.deferred_cap] = *c;
  if (dev.deferred_count == 1) {
    struct itimerspec its = {.it_value = {.tv_sec = (time_t)(opt.slow_ms / 1000),
                                          .tv_nsec = (long)(opt.slow_ms % 1000) * 1000000}};
    timerfd_settime(dev.timerfd, 0, &its, NULL);
  }
}

// Serves one chain. Never trusts the driver: every index, length and address is checked, and a chain that
// breaks the rules is completed with used.len 0 (its status byte, if any, is not written) rather than
// crashing.
static void handle_chain(uint32_t q, uint16_t head) {
  struct vq *vq = &dev.vqs[q];
  uint64_t reqno = ++dev.reqno;
  vq->requests++;
  static struct seg segs[MAX_QUEUE_SIZE];
  int count = 0;
  uint64_t rd = 0, wr = 0;
  const char *bad = NULL;
  if (head >= vq->num) {
    say("request %" PRIu64 " queue %u: avail ring names head %u >= queue size %u: ignored", reqno, q, head,
        vq->num);
    dev.bad_chains++;
    return;
  }
  for (uint16_t idx = head;;) {
    struct {
      uint64_t addr;
      uint32_t len;
      uint16_t flags, next;
    } d;
    if (count == (int)vq->num) {
      bad = "descriptor chain loops";
      break;
    }
    if (!guest_read(&d, vq->desc + 16 * (uint64_t)idx, sizeof d)) {
      bad = "descriptor table not mapped";
      break;
    }
    if (d.flags & VRING_DESC_F_INDIRECT) {
      bad = "indirect descriptor (not negotiated)";
      break;
    }
    bool w = d.flags & VRING_DESC_F_WRITE;
    if (!w && wr > 0) {
      bad = "device-readable descriptor after a writable one";
      break;
    }
    segs[count++] = (struct seg){d.addr, d.len, w};
    if (w)
      wr += d.len;
    else
      rd += d.len;
    if (!(d.flags & VRING_DESC_F_NEXT)) break;
    if (d.next >= vq->num) {
      bad = "next index out of range";
      break;
    }
    idx = d.next;
  }
  struct completion c = {.q = q,
                         .head = head,
                         .second = (uint16_t)vq->num,
                         .writable = (uint32_t)wr,
                         .reqno = reqno,
                         .generation = dev.generation};
  if (count > 1) {
    struct {
      uint64_t addr;
      uint32_t len;
      uint16_t flags, next;
    } d0;
    c.second = guest_read(&d0, vq->desc + 16 * (uint64_t)head, sizeof d0) ? d0.next : (uint16_t)vq->num;
  }
  struct virtio_blk_outhdr hdr;
  if (!bad && (rd < BLK_HEADER_BYTES || !chain_copy(segs, count, false, 0, (uint8_t *)&hdr, sizeof hdr)))
    bad = "no readable 16-byte request header";
  if (!bad && wr < 1) bad = "no writable status byte";
  if (bad) {
    say("request %" PRIu64 " queue %u head %u: %s: completed with used.len 0", reqno, q, head, bad);
    dev.bad_chains++;
    c.len = 0;
    complete_later_or_now(&c);
    return;
  }
  if (fault_at(F_STALL, reqno, NULL)) {
    say("request %" PRIu64 " queue %u head %u (type %u): stall: never completed", reqno, q, head, hdr.type);
    dev.faults_applied++;
    return;
  }
  uint8_t status = VIRTIO_BLK_S_OK;
  uint64_t offset = hdr.sector * (uint64_t)SECTOR;
  uint64_t written = 1;  // used.len: bytes the device wrote into the chain (the status byte at least)
  if (fault_at(F_IOERR_EVERY, reqno, NULL)) {
    say("request %" PRIu64 " queue %u (type %u): ioerr", reqno, q, hdr.type);
    dev.faults_applied++;
    status = VIRTIO_BLK_S_IOERR;
  } else if (hdr.type == VIRTIO_BLK_T_IN || hdr.type == VIRTIO_BLK_T_OUT) {
    bool in = hdr.type == VIRTIO_BLK_T_IN;
    uint64_t len = in ? wr - 1 : rd - BLK_HEADER_BYTES;
    if (len % SECTOR != 0 || hdr.sector > dev.capacity_bytes / SECTOR || len > dev.capacity_bytes - offset) {
      say("request %" PRIu64 ": %s of %" PRIu64 " bytes at sector %" PRIu64
          " is outside the disk or not whole sectors",
          reqno, in ? "read" : "write", len, (uint64_t)hdr.sector);
      status = VIRTIO_BLK_S_IOERR;
    } else if (!chain_copy(segs, count, in, in ? 0 : BLK_HEADER_BYTES, dev.disk + offset, len)) {
      say("request %" PRIu64 ": data buffer not mapped (or wrong permission)", reqno);
      status = VIRTIO_BLK_S_IOERR;
    } else if (in) {
      written = wr;
    }
  } else if (hdr.type == VIRTIO_BLK_T_FLUSH) {
    // RAM: nothing to flush.
  } else if (hdr.type == VIRTIO_BLK_T_GET_ID) {
    char id[BLK_ID_BYTES] = {0};
    snprintf(id, sizeof id, "faulty-blk:%s", opt.name);
    uint64_t n = wr - 1 < BLK_ID_BYTES ? wr - 1 : BLK_ID_BYTES;
    if (chain_copy(segs, count, true, 0, (uint8_t *)id, n))
      written = wr;
    else
      status = VIRTIO_BLK_S_IOERR;
  } else {
    status = VIRTIO_BLK_S_UNSUPP;
  }
  if (!chain_copy(segs, count, true, wr - 1, &status, 1)) {
    say("request %" PRIu64 ": status byte not mapped writable: completed with used.len 0", reqno);
    written = 0;
  }
  c.len = (uint32_t)written;
  complete_later_or_now(&c);
}

// Initial content of [from, to) (sector-aligned): zeros, or with --fill sectors each sector's number.
static void fill(uint8_t *disk, uint64_t from, uint64_t to) {
  if (!opt.fill_sectors) {
    memset(disk + from, 0, to - from);
    return;
  }
  for (uint64_t off = from; off < to; off += 8) {
    uint64_t sector = off / SECTOR;
    memcpy(disk + off, &sector, 8);
  }
}

static void resize(uint64_t bytes) {
  uint8_t *grown = realloc(dev.disk, bytes);
  if (!grown) {
    say("resize to %" PRIu64 " bytes: out of memory", bytes);
    return;
  }
  if (bytes > dev.capacity_bytes) fill(grown, dev.capacity_bytes, bytes);
  dev.disk = grown;
  dev.capacity_bytes = bytes;
  dev.config.capacity = bytes / SECTOR;
  struct {
    struct vduse_config_data hdr;
    uint64_t capacity;
  } data = {{offsetof(struct virtio_blk_config, capacity), sizeof(uint64_t)}, bytes / SECTOR};
  if (ioctl(dev.devfd, VDUSE_DEV_SET_CONFIG, &data) < 0)
    say("VDUSE_DEV_SET_CONFIG: %s", strerror(errno));
  else if (ioctl(dev.devfd, VDUSE_DEV_INJECT_CONFIG_IRQ) < 0)
    say("VDUSE_DEV_INJECT_CONFIG_IRQ: %s", strerror(errno));
  else
    say("capacity is now %" PRIu64 " bytes (%" PRIu64 " sectors); config interrupt sent", bytes,
        bytes / SECTOR);
}

// Puts a completion in the used ring, bent by the faults that name its request.
static void publish(const struct completion *c) {
  struct vq *vq = &dev.vqs[c->q];
  if (c->generation != dev.generation || !vq->started) return;  // the device was reset since
  uint32_t id = c->head, len = c->len;
  uint64_t bytes = 0;
  if (fault_at(F_BAD_ID, c->reqno, NULL)) {
    id = vq->num + 7;
    say("request %" PRIu64 " queue %u: bad-id: used.id %u (queue size %u) instead of head %u", c->reqno, c->q,
        id, vq->num, c->head);
    dev.faults_applied++;
  } else if (fault_at(F_NOT_HEAD, c->reqno, NULL)) {
    id = c->second;
    say("request %" PRIu64
        " queue %u: not-head: used.id %u (a descriptor inside the chain) instead of head %u",
        c->reqno, c->q, id, c->head);
    dev.faults_applied++;
  }
  if (fault_at(F_BAD_LEN, c->reqno, NULL)) {
    len = c->writable + 4096;
    say("request %" PRIu64 " queue %u: bad-len: used.len %u, the chain has %u writable bytes", c->reqno, c->q,
        len, c->writable);
    dev.faults_applied++;
  }
  used_push(vq, c->q, id, len);
  if (fault_at(F_DUP, c->reqno, NULL)) {
    say("request %" PRIu64 " queue %u: dup: head %u completed twice", c->reqno, c->q, id);
    dev.faults_applied++;
    used_push(vq, c->q, id, len);
  }
  if (fault_at(F_RESIZE, c->reqno, &bytes)) {
    dev.faults_applied++;
    dev.resize_pending = bytes;
  }
}

static void after_completions(void) {
  for (uint32_t q = 0; q < opt.queues; q++) flush_used(q);
  if (dev.resize_pending) {
    uint64_t bytes = dev.resize_pending;
    dev.resize_pending = 0;
    resize(bytes);
  }
}

static void process_queue(uint32_t q) {
  struct vq *vq = &dev.vqs[q];
  while (vq->started) {
    uint16_t *avail_idx = ring_u16(vq->avail + 2, false);
    if (!avail_idx) {
      say("queue %u: avail ring at 0x%" PRIx64 " not mapped", q, vq->avail);
      break;
    }
    uint16_t idx = __atomic_load_n(avail_idx, __ATOMIC_ACQUIRE);  // the entries and descriptors after it
    uint16_t n = (uint16_t)(idx - vq->last_avail);
    if (n == 0) break;
    if (n > vq->num) {
      say("queue %u: avail index %u is %u ahead of %u (> queue size): queue ignored until reset", q, idx, n,
          vq->last_avail);
      vq->started = false;
      break;
    }
    while (vq->last_avail != idx) {
      uint16_t head;
      if (!guest_read(&head, vq->avail + 4 + 2 * (uint64_t)(vq->last_avail % vq->num), 2)) {
        say("queue %u: avail ring entry not mapped", q);
        return;
      }
      vq->last_avail++;
      handle_chain(q, head);
    }
  }
  after_completions();
}

// ---- control messages
// -----------------------------------------------------------------------------------------

static void stop_queues(void) {
  for (uint32_t q = 0; q < opt.queues; q++) {
    struct vq *vq = &dev.vqs[q];
    if (vq->kickfd >= 0) {
      struct vduse_vq_eventfd e = {.index = q, .fd = VDUSE_EVENTFD_DEASSIGN};
      ioctl(dev.devfd, VDUSE_VQ_SETUP_KICKFD, &e);
      close(vq->kickfd);
    }
    uint64_t requests = vq->requests;
    *vq = (struct vq){.kickfd = -1, .requests = requests};
  }
  dev.generation++;
  dev.deferred_count = 0;
  struct itimerspec off = {0};
  timerfd_settime(dev.timerfd, 0, &off, NULL);
  unmap_all();
}

static void start_queues(void) {
  for (uint32_t q = 0; q < opt.queues; q++) {
    struct vq *vq = &dev.vqs[q];
    struct vduse_vq_info info = {.index = q};
    if (ioctl(dev.devfd, VDUSE_VQ_GET_INFO, &info) < 0) {
      say("queue %u: VQ_GET_INFO: %s", q, strerror(errno));
      continue;
    }
    if (!info.ready || info.num == 0 || info.num > MAX_QUEUE_SIZE) {
      say("queue %u: not started (ready %u, size %u)", q, info.ready, info.num);
      continue;
    }
    vq->num = info.num;
    vq->desc = info.desc_addr, vq->avail = info.driver_addr, vq->used = info.device_addr;
    vq->last_avail = info.split.avail_index;
    uint16_t *used_idx = ring_u16(vq->used + 2, false);
    vq->used_idx = used_idx ? *used_idx : vq->last_avail;
    vq->kickfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    struct vduse_vq_eventfd e = {.index = q, .fd = vq->kickfd};
    if (vq->kickfd < 0 || ioctl(dev.devfd, VDUSE_VQ_SETUP_KICKFD, &e) < 0) {
      say("queue %u: kick eventfd: %s", q, strerror(errno));
      continue;
    }
    vq->started = true;
    say("queue %u started: size %u, avail index %u, used index %u", q, vq->num, vq->last_avail, vq->used_idx);
  }
}

static void handle_message(const struct vduse_dev_request *req) {
  struct vduse_dev_response resp = {.request_id = req->request_id, .result = VDUSE_REQ_RESULT_OK};
  switch (req->type) {
    case VDUSE_GET_VQ_STATE: {
      uint32_t q = req->vq_state.index;
      resp.vq_state.index = q;
      resp.vq_state.split.avail_index = q < opt.queues ? dev.vqs[q].last_avail : 0;
      break;
    }
    case VDUSE_SET_STATUS: {
      uint8_t status = req->s.status;
      if (status == 0) {
        stop_queues();
        say("reset (status 0); %" PRIu64 " requests so far", dev.reqno);
      } else if ((status & VIRTIO_CONFIG_S_DRIVER_OK) && !(dev.status & VIRTIO_CONFIG_S_DRIVER_OK)) {
        uint64_t features = 0;
        ioctl(dev.devfd, VDUSE_DEV_GET_FEATURES, &features);
        say("DRIVER_OK, features 0x%" PRIx64, features);
        start_queues();
      }
      dev.status = status;
      break;
    }
    case VDUSE_UPDATE_IOTLB:
      unmap_all();  // re-resolved with IOTLB_GET_FD on the next access
      break;
    default:
      say("unknown message type %u: answered FAILED", req->type);
      resp.result = VDUSE_REQ_RESULT_FAILED;
  }
  if (write(dev.devfd, &resp, sizeof resp) != (ssize_t)sizeof resp)
    say("answering message %u: %s", req->request_id, strerror(errno));
  // A queue started by DRIVER_OK may already hold requests (its kick fired before the eventfd was attached).
  if (req->type == VDUSE_SET_STATUS && (dev.status & VIRTIO_CONFIG_S_DRIVER_OK))
    for (uint32_t q = 0; q < opt.queues; q++) process_queue(q);
}

static void serve_messages(void) {
  for (;;) {
    struct vduse_dev_request req;
    ssize_t n = read(dev.devfd, &req, sizeof req);
    if (n < 0) {
      if (errno != EAGAIN && errno != EINTR) {
        say("reading messages: %s: the device is broken", strerror(errno));
        dev.broken = true;
      }
      return;
    }
    if (n != (ssize_t)sizeof req) return;
    handle_message(&req);
  }
}

static void fire_deferred(void) {
  uint64_t expirations;
  if (read(dev.timerfd, &expirations, sizeof expirations) < 0 && errno != EAGAIN)
    say("timerfd: %s", strerror(errno));
  uint64_t now = now_ms();
  while (dev.deferred_count > 0) {
    struct completion *c = &dev.deferred[dev.deferred_head];
    if (c->due_ms > now) {
      uint64_t wait = c->due_ms - now;
      struct itimerspec its = {
          .it_value = {.tv_sec = (time_t)(wait / 1000), .tv_nsec = (long)(wait % 1000) * 1000000}};
      timerfd_settime(dev.timerfd, 0, &its, NULL);
      break;
    }
    dev.deferred_head = (dev.deferred_head + 1) % dev.deferred_cap;
    dev.deferred_count--;
    publish(c);
  }
  after_completions();
}

// ---- set-up and teardown
// --------------------------------------------------------------------------------------

static int destroy(const char *name) {
  int ctl = open("/dev/vduse/control", O_RDWR | O_CLOEXEC);
  if (ctl < 0) {
    say("/dev/vduse/control: %s", strerror(errno));
    return 1;
  }
  char buf[VDUSE_NAME_MAX] = {0};
  snprintf(buf, sizeof buf, "%s", name);
  int rc = ioctl(ctl, VDUSE_DESTROY_DEV, buf);
  if (rc < 0)
    say("DESTROY_DEV: %s%s", strerror(errno),
        errno == EBUSY ? " (still a vdpa device or open: vdpa dev del it first)" : "");
  else
    say("VDUSE device destroyed");
  close(ctl);
  return rc < 0 ? 1 : 0;
}

static int create(void) {
  int ctl = open("/dev/vduse/control", O_RDWR | O_CLOEXEC);
  if (ctl < 0) {
    say("/dev/vduse/control: %s (is the vduse module loaded?)", strerror(errno));
    return -1;
  }
  uint64_t version = VDUSE_API_VERSION;
  if (ioctl(ctl, VDUSE_SET_API_VERSION, &version) < 0) say("SET_API_VERSION 0: %s", strerror(errno));
  struct virtio_blk_config *cfg = &dev.config;
  cfg->capacity = opt.size / SECTOR;
  cfg->seg_max = opt.queue_size - 2;
  cfg->blk_size = SECTOR;
  cfg->num_queues = (uint16_t)opt.queues;
  uint64_t features = (1ull << VIRTIO_F_VERSION_1) | (1ull << VIRTIO_F_ACCESS_PLATFORM) |
                      (1ull << VIRTIO_BLK_F_FLUSH) | (1ull << VIRTIO_BLK_F_SEG_MAX) |
                      (1ull << VIRTIO_BLK_F_BLK_SIZE) | (opt.queues > 1 ? 1ull << VIRTIO_BLK_F_MQ : 0);
  size_t size = sizeof(struct vduse_dev_config) + sizeof *cfg;
  struct vduse_dev_config *dc = calloc(1, size);
  if (!dc) return -1;
  snprintf(dc->name, sizeof dc->name, "%s", opt.name);
  dc->device_id = VIRTIO_ID_BLOCK;
  dc->features = features;
  dc->vq_num = opt.queues;
  dc->vq_align = (uint32_t)sysconf(_SC_PAGESIZE);
  dc->config_size = sizeof *cfg;
  memcpy(dc->config, cfg, sizeof *cfg);
  int rc = ioctl(ctl, VDUSE_CREATE_DEV, dc);
  int err = errno;
  free(dc);
  close(ctl);
  if (rc < 0) {
    say("CREATE_DEV: %s", strerror(err));
    return -1;
  }
  char path[300];
  snprintf(path, sizeof path, "/dev/vduse/%s", opt.name);
  for (int i = 0; i < 200 && (dev.devfd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC)) < 0 && errno == ENOENT;
       i++)
    usleep(10000);  // devtmpfs creates the node asynchronously
  if (dev.devfd < 0) {
    say("%s: %s", path, strerror(errno));
    return -1;
  }
  for (uint32_t q = 0; q < opt.queues; q++) {
    struct vduse_vq_config vc = {.index = q, .max_size = (uint16_t)opt.queue_size};
    if (ioctl(dev.devfd, VDUSE_VQ_SETUP, &vc) < 0) {
      say("VQ_SETUP %u: %s", q, strerror(errno));
      return -1;
    }
  }
  if (opt.msg_timeout >= 0) {
    snprintf(path, sizeof path, "/sys/class/vduse/%s/msg_timeout", opt.name);
    FILE *f = fopen(path, "w");
    if (!f || fprintf(f, "%d\n", opt.msg_timeout) < 0 || fclose(f) != 0) {
      say("%s: %s", path, strerror(errno));
      return -1;
    }
  }
  say("created: %" PRIu64 " bytes, %u queue(s) of %u, features 0x%" PRIx64 ", msg_timeout %d", opt.size,
      opt.queues, opt.queue_size, features, opt.msg_timeout);
  return 0;
}

static void usage(void) {
  fprintf(stderr,
          "usage: faulty-blk --name NAME [--size BYTES] [--queues N] [--queue-size N] [--msg-timeout SEC]\n"
          "                  [--ready-file PATH] [--fill zero|sectors] [--fault SPEC]...\n"
          "       faulty-blk --destroy NAME\n"
          "SPEC: bad-id@N not-head@N dup@N bad-len@N ioerr-every:N stall@N slow:MS resize@N:BYTES\n");
  exit(2);
}

static uint64_t parse_u64(const char *s, const char *what) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 0);
  if (errno || end == s || *end) {
    fprintf(stderr, "faulty-blk: %s: not a number: '%s'\n", what, s);
    exit(2);
  }
  return v;
}

static void parse_fault(const char *spec) {
  if (opt.nfaults == MAX_FAULTS) usage();
  struct fault *f = &opt.faults[opt.nfaults++];
  for (size_t k = 0; k < sizeof fault_names / sizeof *fault_names; k++) {
    size_t len = strlen(fault_names[k]);
    if (strncmp(spec, fault_names[k], len) != 0 || (spec[len] != '@' && spec[len] != ':')) continue;
    f->kind = (enum fault_kind)k;
    char arg[64];
    snprintf(arg, sizeof arg, "%s", spec + len + 1);
    if (f->kind == F_RESIZE) {
      char *colon = strchr(arg, ':');
      if (!colon) usage();
      *colon = 0;
      f->bytes = parse_u64(colon + 1, spec);
      if (f->bytes == 0 || f->bytes % SECTOR) usage();
    }
    f->n = parse_u64(arg, spec);
    if (f->n == 0) usage();
    if (f->kind == F_SLOW) opt.slow_ms = f->n;
    return;
  }
  fprintf(stderr, "faulty-blk: unknown fault '%s'\n", spec);
  usage();
}

int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!v) usage();
    i++;
    if (!strcmp(a, "--name"))
      opt.name = v;
    else if (!strcmp(a, "--destroy"))
      return opt.name = v, destroy(v);
    else if (!strcmp(a, "--size"))
      opt.size = parse_u64(v, a);
    else if (!strcmp(a, "--queues"))
      opt.queues = (uint32_t)parse_u64(v, a);
    else if (!strcmp(a, "--queue-size"))
      opt.queue_size = (uint32_t)parse_u64(v, a);
    else if (!strcmp(a, "--msg-timeout"))
      opt.msg_timeout = (int)parse_u64(v, a);
    else if (!strcmp(a, "--ready-file"))
      opt.ready_file = v;
    else if (!strcmp(a, "--fault"))
      parse_fault(v);
    else if (!strcmp(a, "--fill") && (!strcmp(v, "sectors") || !strcmp(v, "zero")))
      opt.fill_sectors = !strcmp(v, "sectors");
    else
      usage();
  }
  if (!opt.name || !*opt.name || opt.size == 0 || opt.size % SECTOR || opt.queues == 0 ||
      opt.queues > MAX_QUEUES || opt.queue_size < 4 || opt.queue_size > MAX_QUEUE_SIZE ||
      (opt.queue_size & (opt.queue_size - 1)))
    usage();
  dev.capacity_bytes = opt.size;
  dev.disk = calloc(1, opt.size);
  if (!dev.disk) {
    say("cannot allocate %" PRIu64 " bytes", opt.size);
    return 1;
  }
  fill(dev.disk, 0, opt.size);
  for (uint32_t q = 0; q < MAX_QUEUES; q++) dev.vqs[q].kickfd = -1;
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigprocmask(SIG_BLOCK, &mask, NULL);
  int sigfd = signalfd(-1, &mask, SFD_CLOEXEC);
  dev.timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (sigfd < 0 || dev.timerfd < 0 || create() < 0) return 1;
  for (int i = 0; i < opt.nfaults; i++)
    say("fault %s %" PRIu64 "%s", fault_names[opt.faults[i].kind], opt.faults[i].n,
        opt.faults[i].kind == F_RESIZE ? " (resize)" : "");
  if (opt.ready_file) {
    FILE *f = fopen(opt.ready_file, "w");
    if (!f || fprintf(f, "%d\n", getpid()) < 0 || fclose(f) != 0) {
      say("%s: %s", opt.ready_file, strerror(errno));
      return 1;
    }
  }
  for (;;) {
    struct pollfd fds[3 + MAX_QUEUES];
    int n = 0;
    fds[n++] = (struct pollfd){.fd = sigfd, .events = POLLIN};
    fds[n++] = (struct pollfd){.fd = dev.timerfd, .events = POLLIN};
    fds[n++] = (struct pollfd){.fd = dev.broken ? -1 : dev.devfd, .events = POLLIN};
    for (uint32_t q = 0; q < opt.queues; q++)
      fds[n++] = (struct pollfd){.fd = dev.vqs[q].started ? dev.vqs[q].kickfd : -1, .events = POLLIN};
    if (poll(fds, (nfds_t)n, -1) < 0) {
      if (errno == EINTR) continue;
      say("poll: %s", strerror(errno));
      return 1;
    }
    if (fds[0].revents) break;
    if (fds[2].revents & (POLLERR | POLLHUP)) {
      say("the kernel marked the device broken (a message timed out?)");
      dev.broken = true;
    } else if (fds[2].revents & POLLIN) {
      serve_messages();
    }
    if (fds[1].revents) fire_deferred();
    for (uint32_t q = 0; q < opt.queues; q++) {
      if (!(fds[3 + q].revents & POLLIN) || !dev.vqs[q].started) continue;
      uint64_t kicks;
      if (read(dev.vqs[q].kickfd, &kicks, sizeof kicks) < 0 && errno != EAGAIN)
        say("kick %u: %s", q, strerror(errno));
      process_queue(q);
    }
  }
  char counts[256] = "";
  for (uint32_t q = 0; q < opt.queues; q++)
    snprintf(counts + strlen(counts), sizeof counts - strlen(counts), "%s%" PRIu64, q ? "/" : "",
             dev.vqs[q].requests);
  say("SIGTERM: %" PRIu64 " requests (per queue %s), %" PRIu64 " faults applied, %" PRIu64 " bad chains",
      dev.reqno, counts, dev.faults_applied, dev.bad_chains);
  stop_queues();
  close(dev.devfd);
  return destroy(opt.name);
}
