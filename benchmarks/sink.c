/* sink: a receive-only UDP server in C, to measure the load generator's own ceiling.
 *
 * Binds 127.0.0.1:PORT with a 4 MiB receive buffer (as the designs ask for), prints the
 * seed's "Server menunggu..." on stdout when ready, then reads with recvmmsg in batches and
 * counts, nothing else. On SIGINT or SIGTERM prints "received=N kernel_drops=unknown" on
 * stderr and exits; the kernel's drops are read from /proc/net/udp by the caller.
 *
 * usage: sink PORT
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BATCH 64
#define MAX_DATAGRAM 2048
#define RCVBUF (4 * 1024 * 1024)
#define SO_RCVBUFFORCE_LINUX 33

static volatile sig_atomic_t stopping = 0;

static void on_signal(int signum) {
    (void)signum;
    stopping = 1;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: sink PORT\n");
        return 2;
    }
    int port = atoi(argv[1]);
    if (port < 1 || port > 65535) {
        fprintf(stderr, "sink: bad port\n");
        return 2;
    }
    int sock = socket(AF_INET, SOCK_DGRAM, 0);
    int size = RCVBUF;
    if (sock < 0 ||
        (setsockopt(sock, SOL_SOCKET, SO_RCVBUFFORCE_LINUX, &size, sizeof size) < 0 &&
         setsockopt(sock, SOL_SOCKET, SO_RCVBUF, &size, sizeof size) < 0)) {
        perror("sink: socket");
        return 1;
    }
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(port)};
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(sock, (struct sockaddr *)&address, sizeof address) < 0) {
        perror("sink: bind");
        return 1;
    }
    struct sigaction action = {.sa_handler = on_signal}; /* no SA_RESTART: recvmmsg returns */
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGTERM, &action, NULL);

    static char buffers[BATCH][MAX_DATAGRAM];
    struct iovec iovs[BATCH];
    struct mmsghdr msgs[BATCH];
    for (int i = 0; i < BATCH; i++) {
        iovs[i].iov_base = buffers[i];
        iovs[i].iov_len = MAX_DATAGRAM;
    }
    printf("Server menunggu...\n");
    fflush(stdout);
    unsigned long received = 0;
    while (!stopping) {
        for (int i = 0; i < BATCH; i++) {
            memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
            msgs[i].msg_hdr.msg_iov = &iovs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int count = recvmmsg(sock, msgs, BATCH, MSG_WAITFORONE, NULL);
        if (count < 0) {
            if (errno == EINTR) continue;
            perror("sink: recvmmsg");
            return 1;
        }
        received += (unsigned long)count;
    }
    fprintf(stderr, "received=%lu\n", received);
    return 0;
}
