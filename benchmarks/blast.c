/* blast: the bench's load generator in C, so that it takes as little of the 2 shared cores
 * as possible and the bench measures the server, not the generator.
 *
 * Sends the seed's "userN: pesan ke-K" from USERS sockets (one source port each) to a
 * loopback address at RATE datagrams a second for DURATION seconds, with sendmmsg in
 * batches, paced on a fixed grid. Refuses any target outside 127.0.0.0/8.
 * Prints "sent=N elapsed_s=S rate_per_s=R refused=E" on stdout.
 *
 * usage: blast PORT RATE DURATION_S USERS [PREFIX [PATTERN]]
 *   RATE 0 sends as fast as possible. PREFIX is the username prefix (default "load").
 *   PATTERN is what each user's counters do: "next" (1, 2, 3 ...; the default), "gaps"
 *   (1, 3, 5 ...: every datagram after the first skips one, a gap for the accounting), or
 *   "fresh" (every datagram a new username with counter 1: a new identity each time).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 8
#define MAX_USERS 10000
#define MAX_TEXT 64

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: blast PORT RATE DURATION_S USERS [PREFIX]\n");
        return 2;
    }
    int port = atoi(argv[1]);
    double rate = atof(argv[2]);
    double duration_s = atof(argv[3]);
    int users = atoi(argv[4]);
    const char *prefix = argc > 5 ? argv[5] : "load";
    const char *pattern = argc > 6 ? argv[6] : "next";
    int fresh = strcmp(pattern, "fresh") == 0;
    unsigned long step = strcmp(pattern, "gaps") == 0 ? 2 : 1;
    if (!fresh && step == 1 && strcmp(pattern, "next") != 0) {
        fprintf(stderr, "blast: PATTERN is next, gaps or fresh\n");
        return 2;
    }
    if (port < 1 || port > 65535 || users < 1 || users > MAX_USERS || duration_s <= 0 ||
        duration_s > 600 || rate < 0) {
        fprintf(stderr, "blast: bad arguments\n");
        return 2;
    }
    struct sockaddr_in target = {.sin_family = AF_INET, .sin_port = htons(port)};
    target.sin_addr.s_addr = htonl(INADDR_LOOPBACK); /* loopback only, by construction */

    int *socks = calloc(users, sizeof(int));
    unsigned long *counters = calloc(users, sizeof(unsigned long));
    if (!socks || !counters) return 1;
    for (int u = 0; u < users; u++) {
        socks[u] = socket(AF_INET, SOCK_DGRAM, 0);
        if (socks[u] < 0 || connect(socks[u], (struct sockaddr *)&target, sizeof target) < 0) {
            perror("blast: socket");
            return 1;
        }
    }

    struct mmsghdr msgs[BATCH];
    struct iovec iovs[BATCH];
    char texts[BATCH][MAX_TEXT];
    unsigned long sent = 0, refused = 0;
    int user = 0;
    double start = now_s(), deadline = start + duration_s;
    while (1) {
        double now = now_s();
        if (now >= deadline) break;
        /* How many may go now: the grid says rate * elapsed in total. */
        long due = rate > 0 ? (long)((now - start) * rate) - (long)sent : BATCH;
        if (due <= 0) {
            struct timespec pause = {0, 50000}; /* 50 us */
            nanosleep(&pause, NULL);
            continue;
        }
        if (due > BATCH) due = BATCH;
        /* One sendmmsg per user run: consecutive messages of a batch share a socket. */
        int count = (int)due;
        for (int i = 0; i < count; i++) {
            counters[user] += step;
            int length = fresh ? snprintf(texts[i], MAX_TEXT, "%s%lu: pesan ke-1", prefix,
                                          sent + (unsigned long)i)
                               : snprintf(texts[i], MAX_TEXT, "%s%d: pesan ke-%lu", prefix,
                                          user, counters[user] - step + 1);
            iovs[i].iov_base = texts[i];
            iovs[i].iov_len = (size_t)length;
            memset(&msgs[i], 0, sizeof msgs[i]);
            msgs[i].msg_hdr.msg_iov = &iovs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int done = sendmmsg(socks[user], msgs, (unsigned)count, 0);
        if (done < 0) {
            if (errno == ECONNREFUSED) {
                refused++;
                counters[user] -= step * (unsigned long)count;
                continue;
            }
            if (errno == EAGAIN || errno == ENOBUFS) {
                counters[user] -= step * (unsigned long)count;
                continue;
            }
            perror("blast: sendmmsg");
            return 1;
        }
        counters[user] -= step * (unsigned long)(count - done);
        sent += (unsigned long)done;
        user = (user + 1) % users;
    }
    double elapsed = now_s() - start;
    printf("sent=%lu elapsed_s=%.3f rate_per_s=%.0f refused=%lu\n", sent, elapsed,
           elapsed > 0 ? sent / elapsed : 0.0, refused);
    return 0;
}
