/* The cluster bench's throughput load generator in C (bench/cluster.py --client native).

   On a 2-core machine the load generator shares the cores with the nodes it measures, so whatever it
   spends per dispatch is taken from them: this one spends little more than the kernel's share of its
   sockets. It does what bench/dispatch.py's Python client does, on the same wire: keep-alive HTTP/1.1
   callers sending CreateDispatch, and protocol-level workers on /agent that accept every offer at once and
   report each assigned job RUNNING then SUCCESS. Everything request-specific (tokens, Twirp bodies, the
   WebSocket upgrade, the worker messages' protobuf) is made by bench/cluster.py beforehand and read from
   the plan file; a job id is written into the message templates at the offsets the plan gives.

   Protocol: prints "READY" once every worker is registered and every caller connected, then waits for a
   line on stdin; runs the callers for the plan's duration, waits for the created dispatches' assignments
   (up to the plan's drain time), then prints what it saw (see report()) and exits 0. A setup failure
   prints "FATAL <reason>" and exits 1.

   Build: cc -O2 -o loadgen bench/loadgen.c (bench/cluster.py does it). */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 256

typedef struct {
    uint32_t len;
    char *data;
} Blob;

typedef struct {
    Blob payload;
    uint32_t offsets[2];
    int count;
} Template;

enum { WORKER, CALLER };

typedef struct {
    int kind, fd, node, index;
    int registered, lost;
    char *in;
    size_t in_len, in_cap;
    char *out; /* bytes the socket would not take yet */
    size_t out_len, out_cap;
    /* a caller */
    int64_t sent_ns;
    long call; /* the call in flight, or -1 */
} Conn;

typedef struct {
    int64_t sent_ns, reply_ns;
    int status;
    int assigned; /* a JobAssignment for its room came (before or after the reply) */
    char dispatch[32];
} Result;

typedef struct {
    char room[128];
    char dispatch[32];
    int64_t at_ns;
    int worker;
} Assignment;

static uint32_t node_count, duration_ms, drain_ms, callers_per_node, status_step_ms, status_per_step, timeout_ms;
static uint32_t *ports;
static Blob *upgrades, accept_value, register_frame, available_frame;
static Template accept_tpl, running_tpl, success_tpl;
static uint32_t job_id_len, worker_count, *worker_node, call_count;
static uint32_t *call_node;
static Blob *calls, *call_rooms;
static long **queue; /* per node: the calls in order */
static long *queue_len, *queue_next;

static Conn *conns;
static int conn_count, epfd;
static Result *results;
static Assignment *assignments;
static long assigned_count, assignments_cap, created_count, created_assigned, terminations, lost_connections, errors;
static long *room_slots; /* open addressing: room name -> call index, or -1 */
static size_t room_slots_mask;
static long ran_out;
static char **error_samples;
static int error_sample_count;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void fatal(const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    printf("FATAL ");
    vprintf(fmt, args);
    printf("\n");
    va_end(args);
    exit(1);
}

static void fail(const char *fmt, ...) {
    errors++;
    if (error_sample_count >= 5) return;
    char *text = malloc(300);
    va_list args;
    va_start(args, fmt);
    vsnprintf(text, 300, fmt, args);
    va_end(args);
    for (char *p = text; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
    error_samples[error_sample_count++] = text;
}

/* ---------------------------------------------------------------------------------------- the plan */

static FILE *plan;

static uint32_t read_u32(void) {
    uint32_t value;
    if (fread(&value, 4, 1, plan) != 1) fatal("plan ends early");
    return value;
}

static Blob read_blob(void) {
    Blob blob;
    blob.len = read_u32();
    blob.data = malloc(blob.len + 1);
    if (blob.len && fread(blob.data, blob.len, 1, plan) != 1) fatal("plan ends early");
    blob.data[blob.len] = 0;
    return blob;
}

static Template read_template(int count) {
    Template tpl;
    tpl.payload = read_blob();
    tpl.count = count;
    for (int i = 0; i < count; i++) {
        tpl.offsets[i] = read_u32();
        if (tpl.offsets[i] + job_id_len > tpl.payload.len) fatal("template offset out of range");
    }
    return tpl;
}

static void read_plan(const char *path) {
    plan = fopen(path, "rb");
    if (!plan) fatal("cannot open %s", path);
    char magic[6];
    if (fread(magic, 6, 1, plan) != 1 || memcmp(magic, "SBLG1\n", 6)) fatal("not a plan file");
    node_count = read_u32();
    ports = calloc(node_count, sizeof *ports);
    for (uint32_t i = 0; i < node_count; i++) ports[i] = read_u32();
    duration_ms = read_u32();
    drain_ms = read_u32();
    callers_per_node = read_u32();
    status_step_ms = read_u32();
    status_per_step = read_u32();
    timeout_ms = read_u32();
    job_id_len = read_u32();
    upgrades = calloc(node_count, sizeof *upgrades);
    for (uint32_t i = 0; i < node_count; i++) upgrades[i] = read_blob();
    accept_value = read_blob();
    register_frame = read_blob();
    available_frame = read_blob();
    accept_tpl = read_template(2);
    running_tpl = read_template(1);
    success_tpl = read_template(1);
    worker_count = read_u32();
    worker_node = calloc(worker_count, sizeof *worker_node);
    for (uint32_t i = 0; i < worker_count; i++) worker_node[i] = read_u32();
    call_count = read_u32();
    call_node = calloc(call_count, sizeof *call_node);
    calls = calloc(call_count, sizeof *calls);
    call_rooms = calloc(call_count, sizeof *call_rooms);
    queue = calloc(node_count, sizeof *queue);
    queue_len = calloc(node_count, sizeof *queue_len);
    queue_next = calloc(node_count, sizeof *queue_next);
    for (uint32_t n = 0; n < node_count; n++) queue[n] = calloc(call_count, sizeof **queue);
    for (uint32_t i = 0; i < call_count; i++) {
        call_node[i] = read_u32();
        if (call_node[i] >= node_count) fatal("call for an unknown node");
        call_rooms[i] = read_blob();
        calls[i] = read_blob();
        queue[call_node[i]][queue_len[call_node[i]]++] = i;
    }
    fclose(plan);
}

/* ---------------------------------------------------------------------------------------- sockets */

static void append(char **buf, size_t *len, size_t *cap, const char *data, size_t n) {
    if (*len + n > *cap) {
        *cap = (*len + n) * 2 + 1024;
        *buf = realloc(*buf, *cap);
    }
    memcpy(*buf + *len, data, n);
    *len += n;
}

static void drop(Conn *c, const char *why) {
    if (c->fd < 0) return;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    if (!c->lost) {
        c->lost = 1;
        lost_connections++;
        fail("%s %d: %s", c->kind == WORKER ? "worker" : "caller", c->index, why);
    }
}

static void send_bytes(Conn *c, const char *data, size_t n) {
    if (c->fd < 0) return;
    if (c->out_len == 0) {
        ssize_t sent = send(c->fd, data, n, MSG_NOSIGNAL);
        if (sent < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                drop(c, strerror(errno));
                return;
            }
            sent = 0;
        }
        if ((size_t)sent == n) return;
        data += sent;
        n -= (size_t)sent;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
        epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    }
    append(&c->out, &c->out_len, &c->out_cap, data, n);
}

static void flush_out(Conn *c) {
    while (c->out_len) {
        ssize_t sent = send(c->fd, c->out, c->out_len, MSG_NOSIGNAL);
        if (sent < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            drop(c, strerror(errno));
            return;
        }
        memmove(c->out, c->out + sent, c->out_len - (size_t)sent);
        c->out_len -= (size_t)sent;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static int connect_to(uint32_t port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) fatal("socket: %s", strerror(errno));
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) fatal("connect to %u: %s", port, strerror(errno));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv); /* setup reads block, with a bound */
    return fd;
}

/* From setup (blocking reads) to the event loop. */
static void watch(Conn *c) {
    int one = 1;
    if (ioctl(c->fd, FIONBIO, &one) < 0) fatal("FIONBIO: %s", strerror(errno));
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) fatal("epoll_ctl: %s", strerror(errno));
}

static void read_some(Conn *c) {
    char buf[65536];
    ssize_t n = recv(c->fd, buf, sizeof buf, 0);
    if (n <= 0) fatal("%s %d: connection closed during setup", c->kind == WORKER ? "worker" : "caller", c->index);
    append(&c->in, &c->in_len, &c->in_cap, buf, (size_t)n);
}

/* ---------------------------------------------------------------------------------------- protobuf */

static int varint(const uint8_t **p, const uint8_t *end, uint64_t *value) {
    *value = 0;
    for (int shift = 0; shift < 64 && *p < end; shift += 7) {
        uint8_t byte = *(*p)++;
        *value |= (uint64_t)(byte & 0x7F) << shift;
        if (!(byte & 0x80)) return 1;
    }
    return 0;
}

/* The first length-delimited field `number` of a message, or 0. */
static int field(const uint8_t *msg, size_t len, uint32_t number, const uint8_t **out, size_t *out_len) {
    const uint8_t *p = msg, *end = msg + len;
    while (p < end) {
        uint64_t key, size;
        if (!varint(&p, end, &key)) return 0;
        switch (key & 7) {
        case 0:
            if (!varint(&p, end, &size)) return 0;
            break;
        case 1:
            p += 8;
            break;
        case 5:
            p += 4;
            break;
        case 2:
            if (!varint(&p, end, &size) || size > (uint64_t)(end - p)) return 0;
            if ((key >> 3) == number) {
                *out = p;
                *out_len = size;
                return 1;
            }
            p += size;
            break;
        default:
            return 0;
        }
    }
    return 0;
}

/* The oneof case of a ServerMessage (its only field) and that field's bytes. */
static uint32_t server_message(const uint8_t *msg, size_t len, const uint8_t **body, size_t *body_len) {
    const uint8_t *p = msg, *end = msg + len;
    uint64_t key, size;
    if (!varint(&p, end, &key) || (key & 7) != 2 || !varint(&p, end, &size) || size > (uint64_t)(end - p))
        return 0;
    *body = p;
    *body_len = size;
    return (uint32_t)(key >> 3);
}

static void copy_string(char *to, size_t cap, const uint8_t *from, size_t len) {
    if (len >= cap) len = cap - 1;
    memcpy(to, from, len);
    to[len] = 0;
}

/* ---------------------------------------------------------------------------------------- workers */

#define MAX_PAYLOAD 512

/* A binary client frame of `tpl` with `job_id` written in, at `frame`; its size. */
static size_t template_frame(char *frame, const Template *tpl, const uint8_t *job_id) {
    size_t len = tpl->payload.len, head;
    frame[0] = (char)0x82;
    if (len < 126) {
        frame[1] = (char)(0x80 | len);
        head = 2;
    } else {
        frame[1] = (char)(0x80 | 126);
        frame[2] = (char)(len >> 8);
        frame[3] = (char)(len & 0xFF);
        head = 4;
    }
    memset(frame + head, 0, 4); /* a zero mask key leaves the payload as it is (see bench/wire.py) */
    memcpy(frame + head + 4, tpl->payload.data, len);
    for (int i = 0; i < tpl->count; i++) memcpy(frame + head + 4 + tpl->offsets[i], job_id, job_id_len);
    return head + 4 + len;
}

/* The frames of these templates, in one write. */
static void send_templates(Conn *c, const Template *first, const Template *second, const uint8_t *job_id) {
    char frames[2 * (8 + MAX_PAYLOAD)];
    size_t size = template_frame(frames, first, job_id);
    if (second) size += template_frame(frames + size, second, job_id);
    send_bytes(c, frames, size);
}

/* ---------------------------------------------------------------------------------------- rooms */

static uint64_t hash(const uint8_t *data, size_t len) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < len; i++) h = (h ^ data[i]) * 1099511628211ULL;
    return h;
}

static void index_rooms(void) {
    size_t size = 1024;
    while (size < 2 * (size_t)call_count) size *= 2;
    room_slots = malloc(size * sizeof *room_slots);
    for (size_t i = 0; i < size; i++) room_slots[i] = -1;
    room_slots_mask = size - 1;
    for (uint32_t i = 0; i < call_count; i++) {
        size_t slot = hash((const uint8_t *)call_rooms[i].data, call_rooms[i].len) & room_slots_mask;
        while (room_slots[slot] >= 0) slot = (slot + 1) & room_slots_mask;
        room_slots[slot] = i;
    }
}

static long call_of_room(const uint8_t *name, size_t len) {
    size_t slot = hash(name, len) & room_slots_mask;
    for (long call; (call = room_slots[slot]) >= 0; slot = (slot + 1) & room_slots_mask)
        if (call_rooms[call].len == len && !memcmp(call_rooms[call].data, name, len)) return call;
    return -1;
}

static void worker_message(Conn *c, const uint8_t *msg, size_t len, int64_t at) {
    const uint8_t *body, *job, *id, *dispatch, *room, *name;
    size_t body_len, job_len, id_len, dispatch_len, room_len, name_len;
    uint32_t kind = server_message(msg, len, &body, &body_len);
    if (kind == 4) return; /* pong */
    if (kind == 5) {
        terminations++;
        return;
    }
    if (kind != 2 && kind != 3) {
        fail("worker %d: unexpected ServerMessage field %u", c->index, kind);
        return;
    }
    if (!field(body, body_len, 1, &job, &job_len) || !field(job, job_len, 1, &id, &id_len)) {
        fail("worker %d: a job without an id", c->index);
        return;
    }
    if (id_len != job_id_len) {
        fail("worker %d: job id of %zu bytes, the templates take %u", c->index, id_len, job_id_len);
        return;
    }
    if (kind == 2) {
        send_templates(c, &accept_tpl, NULL, id);
        return;
    }
    if (!field(job, job_len, 3, &room, &room_len) || !field(room, room_len, 2, &name, &name_len)) {
        fail("worker %d: an assignment without a room", c->index);
        return;
    }
    if (!field(job, job_len, 9, &dispatch, &dispatch_len)) dispatch_len = 0;
    if (assigned_count == assignments_cap) {
        assignments_cap = assignments_cap * 2 + 1024;
        assignments = realloc(assignments, assignments_cap * sizeof *assignments);
    }
    Assignment *a = &assignments[assigned_count++];
    copy_string(a->room, sizeof a->room, name, name_len);
    copy_string(a->dispatch, sizeof a->dispatch, dispatch, dispatch_len);
    a->at_ns = at;
    a->worker = c->index;
    long call = call_of_room(name, name_len);
    if (call >= 0 && !results[call].assigned) {
        results[call].assigned = 1;
        if (results[call].status == 200) created_assigned++;
    }
    /* RUNNING then SUCCESS, in one write as a worker that ends its job at once would */
    send_templates(c, &running_tpl, &success_tpl, id);
}

/* Every whole frame in the buffer; returns the bytes used. */
static size_t worker_frames(Conn *c, int64_t at) {
    const uint8_t *buf = (const uint8_t *)c->in;
    size_t at_byte = 0, len = c->in_len;
    while (len - at_byte >= 2) {
        uint8_t first = buf[at_byte], second = buf[at_byte + 1];
        size_t start = at_byte + 2;
        uint64_t size = second & 0x7F;
        if (second & 0x80) {
            drop(c, "a masked frame from the server");
            return len;
        }
        if (size == 126) {
            if (len - start < 2) break;
            size = ((uint64_t)buf[start] << 8) | buf[start + 1];
            start += 2;
        } else if (size == 127) {
            if (len - start < 8) break;
            size = 0;
            for (int i = 0; i < 8; i++) size = (size << 8) | buf[start + i];
            start += 8;
        }
        if (len - start < size) break;
        uint8_t opcode = first & 0x0F;
        if (!(first & 0x80) || opcode == 0) {
            drop(c, "a fragmented message");
            return len;
        }
        if (opcode == 2 && c->registered) {
            worker_message(c, buf + start, size, at);
        } else if (opcode == 2) {
            const uint8_t *body;
            size_t body_len;
            if (server_message(buf + start, size, &body, &body_len) != 1) {
                drop(c, "expected a register response first");
                return len;
            }
            c->registered = 1;
        } else if (opcode == 9) {
            char pong[6 + 125];
            pong[0] = (char)0x8A;
            pong[1] = (char)(0x80 | (size & 0x7F));
            memset(pong + 2, 0, 4);
            memcpy(pong + 6, buf + start, size < 125 ? size : 125);
            send_bytes(c, pong, 6 + (size < 125 ? size : 125));
        } else if (opcode == 8) {
            drop(c, "the server closed the WebSocket");
            return len;
        } else if (opcode != 10) {
            drop(c, "an unexpected frame");
            return len;
        }
        at_byte = start + size;
    }
    return at_byte;
}

static void open_worker(Conn *c) {
    c->fd = connect_to(ports[c->node]);
    send_bytes(c, upgrades[c->node].data, upgrades[c->node].len);
    char *end;
    while (!(end = memmem(c->in, c->in_len, "\r\n\r\n", 4))) read_some(c);
    size_t head = (size_t)(end - c->in) + 4;
    if (c->in_len < 12 || memcmp(c->in, "HTTP/1.1 101", 12) || !memmem(c->in, head, accept_value.data, accept_value.len))
        fatal("worker %d: upgrade refused: %.*s", c->index, (int)(head < 200 ? head : 200), c->in);
    memmove(c->in, c->in + head, c->in_len - head);
    c->in_len -= head;
    send_bytes(c, register_frame.data, register_frame.len);
    while (!c->registered) {
        size_t used = worker_frames(c, now_ns());
        memmove(c->in, c->in + used, c->in_len - used);
        c->in_len -= used;
        if (c->fd < 0) fatal("worker %d: lost during registration", c->index);
        if (!c->registered) read_some(c);
    }
    send_bytes(c, available_frame.data, available_frame.len);
    watch(c);
}

/* ---------------------------------------------------------------------------------------- callers */

static int sending = 1;

static void next_call(Conn *c) {
    c->call = -1;
    if (!sending) return;
    if (queue_next[c->node] == queue_len[c->node]) {
        ran_out++;
        return;
    }
    long call = queue[c->node][queue_next[c->node]++];
    c->call = call;
    c->sent_ns = now_ns();
    results[call].sent_ns = c->sent_ns;
    send_bytes(c, calls[call].data, calls[call].len);
}

/* A whole response at the start of the buffer, if there is one; returns the bytes used. */
static size_t caller_response(Conn *c, int64_t at) {
    char *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
    if (!end) return 0;
    size_t head = (size_t)(end - c->in) + 4;
    char *length = NULL;
    for (char *p = c->in; p < end; p++) {
        if ((*p == '\n') && (size_t)(end - p) > 16 && !strncasecmp(p + 1, "content-length:", 15)) {
            length = p + 16;
            break;
        }
    }
    if (!length) {
        drop(c, "a response without a Content-Length");
        return c->in_len;
    }
    size_t body_len = strtoul(length, NULL, 10);
    if (c->in_len < head + body_len) return 0;
    if (c->call < 0) {
        drop(c, "a response nobody asked for");
        return c->in_len;
    }
    Result *r = &results[c->call];
    r->reply_ns = at;
    r->status = atoi(c->in + 9);
    const uint8_t *id;
    size_t id_len;
    if (r->status == 200 && field((const uint8_t *)c->in + head, body_len, 1, &id, &id_len)) {
        copy_string(r->dispatch, sizeof r->dispatch, id, id_len);
        created_count++;
        if (r->assigned) created_assigned++; /* the offer is written before the reply: it may win */
    } else {
        fail("CreateDispatch call %ld: HTTP %d %.*s", c->call, r->status, (int)(body_len < 150 ? body_len : 150), c->in + head);
    }
    next_call(c);
    return head + body_len;
}

static void readable(Conn *c, int64_t at) {
    char buf[65536];
    for (;;) {
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (n <= 0) {
            drop(c, n == 0 ? "the server closed the connection" : strerror(errno));
            return;
        }
        append(&c->in, &c->in_len, &c->in_cap, buf, (size_t)n);
        if ((size_t)n < sizeof buf) break;
    }
    for (;;) { /* worker_frames takes every whole frame at once; caller_response one response */
        size_t used = c->kind == WORKER ? worker_frames(c, at) : caller_response(c, at);
        if (c->fd < 0 || used == 0) return;
        memmove(c->in, c->in + used, c->in_len - used);
        c->in_len -= used;
    }
}

/* ---------------------------------------------------------------------------------------- run */

static void report(int64_t start, int64_t end) {
    for (int i = (int)worker_count; i < conn_count; i++)
        if (conns[i].call >= 0 && conns[i].fd >= 0) fail("CreateDispatch call %ld: no reply", conns[i].call);
    printf("S %lld %lld\n", (long long)start, (long long)end);
    for (uint32_t i = 0; i < call_count; i++) {
        Result *r = &results[i];
        if (!r->sent_ns) continue;
        printf("R %u %lld %lld %d %s\n", i, (long long)r->sent_ns, (long long)r->reply_ns, r->status,
               r->dispatch[0] ? r->dispatch : "-");
    }
    for (long i = 0; i < assigned_count; i++)
        printf("A %s %s %lld %d\n", assignments[i].room, assignments[i].dispatch[0] ? assignments[i].dispatch : "-",
               (long long)assignments[i].at_ns, assignments[i].worker);
    printf("T %ld\nL %ld\nX %ld\nN %ld\n", terminations, lost_connections, ran_out, errors);
    for (int i = 0; i < error_sample_count; i++) printf("E %s\n", error_samples[i]);
    printf("DONE\n");
    fflush(stdout);
}

int main(int argc, char **argv) {
    if (argc != 2) fatal("usage: loadgen PLAN");
    read_plan(argv[1]);
    error_samples = calloc(5, sizeof *error_samples);
    for (uint32_t n = 0; n < node_count; n++)
        if (callers_per_node && !queue_len[n]) fatal("no calls for node %u", n);
    if (accept_tpl.payload.len > MAX_PAYLOAD || running_tpl.payload.len > MAX_PAYLOAD ||
        success_tpl.payload.len > MAX_PAYLOAD)
        fatal("a worker message over %d bytes", MAX_PAYLOAD);
    index_rooms();
    results = calloc(call_count, sizeof *results);
    epfd = epoll_create1(0);
    conn_count = (int)(worker_count + node_count * callers_per_node);
    conns = calloc((size_t)conn_count, sizeof *conns);
    for (uint32_t i = 0; i < worker_count; i++) {
        Conn *c = &conns[i];
        c->kind = WORKER, c->node = (int)worker_node[i], c->index = (int)i, c->fd = -1;
        open_worker(c);
    }
    for (int i = (int)worker_count; i < conn_count; i++) {
        Conn *c = &conns[i];
        c->kind = CALLER, c->index = i - (int)worker_count, c->call = -1;
        c->node = c->index % (int)node_count;
        c->fd = connect_to(ports[c->node]);
        watch(c);
    }
    printf("READY\n");
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin)) fatal("no go");

    int64_t start = now_ns(), stop_at = start + (int64_t)duration_ms * 1000000LL;
    int64_t step_ns = (int64_t)status_step_ms * 1000000LL;
    int64_t give_up = stop_at + (int64_t)drain_ms * 1000000LL, next_status = start + step_ns;
    long status_cursor = 0;
    for (int i = (int)worker_count; i < conn_count; i++) next_call(&conns[i]);
    struct epoll_event events[MAX_EVENTS];
    int64_t now = start;
    for (;;) {
        int64_t wake = next_status;
        if (sending && stop_at < wake) wake = stop_at;
        int wait_ms = wake > now ? (int)((wake - now) / 1000000LL) + 1 : 0;
        int n = epoll_wait(epfd, events, MAX_EVENTS, wait_ms);
        now = now_ns();
        if (sending && now >= stop_at) sending = 0; /* no call starts after the deadline */
        for (int i = 0; i < n; i++) {
            Conn *c = events[i].data.ptr;
            if (c->fd < 0) continue;
            if (events[i].events & EPOLLOUT) flush_out(c);
            if (c->fd >= 0 && events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) readable(c, now);
        }
        if (now >= next_status && worker_count) {
            next_status += step_ns;
            for (uint32_t k = 0; k < status_per_step; k++) {
                Conn *w = &conns[status_cursor++ % (long)worker_count];
                send_bytes(w, available_frame.data, available_frame.len);
            }
        }
        if (!sending) {
            int in_flight = 0;
            for (int i = (int)worker_count; i < conn_count; i++) in_flight |= conns[i].call >= 0 && conns[i].fd >= 0;
            if ((!in_flight && created_assigned >= created_count) || now >= give_up) break;
        }
    }
    report(start, stop_at);
    /* The workers stay connected until told, so that what is checked afterwards (ListDispatch, Redis)
       sees the cluster as the run left it. */
    char rest[64];
    while (fgets(rest, sizeof rest, stdin)) {
    }
    return 0;
}
