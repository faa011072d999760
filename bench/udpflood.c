// SPDX-License-Identifier: Apache-2.0
/*
 * udpflood: send small UDP datagrams as fast as sendmmsg allows, for a number of seconds,
 * then print how many were sent per second. The benchmark's traffic source; built by
 * bench/overhead.py with the system C compiler.
 *
 * usage: udpflood DST_IPV4 PORT SECONDS [PAYLOAD_BYTES [FLOWS]]
 *
 * With FLOWS, the datagrams come from FLOWS sockets bound to source ports 20000, 20001, ...
 * in turn, a batch each: a filter on one of those ports matches one flow in FLOWS.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define BATCH 64

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	struct sockaddr_in dst = { .sin_family = AF_INET };
	struct mmsghdr msgs[BATCH];
	struct iovec iov;
	char payload[1500] = { 0 };
	unsigned long long sent = 0;
	double start, end, seconds;
	size_t size;
	int fds[1024], flows, fd;

	if (argc < 4) {
		fprintf(stderr, "usage: udpflood DST_IPV4 PORT SECONDS [PAYLOAD_BYTES [FLOWS]]\n");
		return 2;
	}
	if (inet_pton(AF_INET, argv[1], &dst.sin_addr) != 1) {
		fprintf(stderr, "udpflood: %s is not an IPv4 address\n", argv[1]);
		return 2;
	}
	dst.sin_port = htons(atoi(argv[2]));
	seconds = atof(argv[3]);
	size = argc > 4 ? (size_t)atoi(argv[4]) : 18;
	if (size > sizeof(payload))
		size = sizeof(payload);
	flows = argc > 5 ? atoi(argv[5]) : 1;
	if (flows < 1 || flows > 1024)
		flows = 1;
	for (int i = 0; i < flows; i++) {
		struct sockaddr_in src = { .sin_family = AF_INET,
					   .sin_port = htons(flows > 1 ? 20000 + i : 0) };

		fd = socket(AF_INET, SOCK_DGRAM, 0);
		if (fd < 0 || bind(fd, (struct sockaddr *)&src, sizeof(src)) < 0 ||
		    connect(fd, (struct sockaddr *)&dst, sizeof(dst)) < 0) {
			perror("udpflood: socket");
			return 1;
		}
		fds[i] = fd;
	}
	iov.iov_base = payload;
	iov.iov_len = size;
	memset(msgs, 0, sizeof(msgs));
	for (int i = 0; i < BATCH; i++) {
		msgs[i].msg_hdr.msg_iov = &iov;
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	start = now();
	end = start + seconds;
	for (unsigned long i = 0; now() < end; i++) {
		int n = sendmmsg(fds[i % flows], msgs, BATCH, 0);

		if (n > 0)
			sent += n;
	}
	printf("%.0f\n", sent / (now() - start));
	return 0;
}
