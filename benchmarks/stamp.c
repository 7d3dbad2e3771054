/* stamp: the delay bench's sender and receiver in C, so that they take as little of the 2
 * shared cores as possible and the bench measures the proxy's timing, not theirs.
 *
 * send: COUNT datagrams to a loopback port at RATE a second, each the CLOCK_MONOTONIC time in
 * ns when it was sent, in decimal. Paced on a fixed grid, sleeping only when more than
 * AHEAD_NS ahead of it: so at high rates a few go back to back, as from a real sender.
 * receive: binds a loopback port, prints "ready", then takes datagrams until COUNT arrived or,
 * after the first, none came for 2 s, and prints each one's latency in ns (arrival minus its
 * stamp; one clock, so no skew) as one line of numbers.
 *
 * usage: stamp send PORT RATE COUNT | stamp receive PORT COUNT
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

#define AHEAD_NS 500000LL
#define MAX_COUNT 10000000L
#define RECEIVE_BUFFER (4 << 20)
#define MAX_RATE 10000000.0

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static struct sockaddr_in loopback(int port) {
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(port)};
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK); /* loopback only, by construction */
    return address;
}

static int send_stamped(int port, double rate, long count) {
    struct sockaddr_in target = loopback(port);
    int sock = socket(AF_INET, SOCK_DGRAM, 0);
    if (sock < 0 || connect(sock, (struct sockaddr *)&target, sizeof target) < 0) {
        perror("stamp: socket");
        return 1;
    }
    long long start = now_ns();
    char text[32];
    for (long i = 0; i < count; i++) {
        long long due = start + (long long)(i * 1e9 / rate);
        if (due - now_ns() > AHEAD_NS) {
            struct timespec at = {.tv_sec = due / 1000000000LL, .tv_nsec = due % 1000000000LL};
            while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &at, NULL) == EINTR) {
            }
        }
        int length = snprintf(text, sizeof text, "%lld", now_ns());
        if (send(sock, text, (size_t)length, 0) < 0 && errno != ECONNREFUSED) {
            perror("stamp: send");
            return 1;
        }
    }
    return 0;
}

static int receive_stamped(int port, long count) {
    struct sockaddr_in address = loopback(port);
    int sock = socket(AF_INET, SOCK_DGRAM, 0);
    int size = RECEIVE_BUFFER;
    if (sock < 0) {
        perror("stamp: socket");
        return 1;
    }
    /* Beyond net.core.rmem_max where privileged, as udpchat's own sockets ask. */
    if (setsockopt(sock, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size) < 0 &&
        setsockopt(sock, SOL_SOCKET, SO_RCVBUF, &size, sizeof size) < 0) {
        perror("stamp: receive buffer");
        return 1;
    }
    if (bind(sock, (struct sockaddr *)&address, sizeof address) < 0) {
        perror("stamp: bind");
        return 1;
    }
    long long *latencies = calloc((size_t)count, sizeof *latencies);
    if (!latencies) return 1;
    printf("ready\n");
    fflush(stdout);
    long got = 0;
    char text[64];
    struct timeval quiet = {.tv_sec = 2};
    while (got < count) {
        ssize_t length = recv(sock, text, sizeof text - 1, 0);
        if (length < 0) {
            if (errno == EINTR) continue;
            break; /* quiet for 2 s: the rest are not coming */
        }
        if (got == 0 && setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &quiet, sizeof quiet) < 0) {
            perror("stamp: timeout");
            return 1;
        }
        long long arrived = now_ns();
        text[length] = 0;
        latencies[got++] = arrived - atoll(text);
    }
    for (long i = 0; i < got; i++) printf(i ? " %lld" : "%lld", latencies[i]);
    printf("\n");
    return 0;
}

int main(int argc, char **argv) {
    int sending = argc == 5 && !strcmp(argv[1], "send");
    int receiving = argc == 4 && !strcmp(argv[1], "receive");
    if (!sending && !receiving) {
        fprintf(stderr, "usage: stamp send PORT RATE COUNT | stamp receive PORT COUNT\n");
        return 2;
    }
    int port = atoi(argv[2]);
    long count = atol(argv[argc - 1]);
    double rate = sending ? atof(argv[3]) : 1.0;
    if (port < 1 || port > 65535 || count < 1 || count > MAX_COUNT ||
        !(rate >= 1.0 && rate <= MAX_RATE)) { /* NaN fails both */
        fprintf(stderr, "stamp: bad arguments\n");
        return 2;
    }
    return sending ? send_stamped(port, rate, count) : receive_stamped(port, count);
}
