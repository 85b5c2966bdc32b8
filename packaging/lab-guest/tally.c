/* The lab's tiny guest: tallies the client's frames (rarp_announce/lab/traffic.py, client_frame)
 * by sequence number on each vNIC and reports on the serial console, so the host can count the
 * frames the guest itself received, not just those written to its tap.
 *
 * Lines (each starts with "tally "; the kernel may print other lines in between):
 *   tally ready <mac> <mac>...      the sockets are open and these vNICs are up
 *   tally first <mac> <seq>         the first client frame on that vNIC
 *   tally gap <mac> <from> <to>     sequences from..to (inclusive) never arrived (yet)
 *   tally late <mac> <seq>          a sequence at or below the highest one seen: reordered or duplicated
 *   tally sum <mac> <frames> <last> every half second: frames so far, highest sequence
 *   tally drops <frames>            every half second: frames the socket's full queue dropped so far,
 *                                   on all vNICs (PACKET_STATISTICS, tp_drops; packet(7))
 *
 * A frame counts when it is addressed to the vNIC's own MAC (PACKET_HOST), carries the local
 * experimental ethertype 0x88B5 (IEEE 802) and the client's marker "rarp-lab".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CLIENT_ETHERTYPE 0x88B5
#define MAX_NICS 8

struct nic {
    int index;
    char mac[18];
    int seen;
    uint64_t frames;
    uint64_t last;
};

static struct nic nics[MAX_NICS];
static int nic_count;
/* A slow guest (TCG on a loaded host) may not drain its socket in time: the kernel drops what
 * overflows and counts it, so the host can tell "reached the guest, dropped by its slowness"
 * from "never reached the guest". */
static uint64_t socket_drops;

static void say(const char *format, ...) __attribute__((format(printf, 1, 2)));

static void say(const char *format, ...)
{
    char line[160];
    va_list args;
    va_start(args, format);
    int length = vsnprintf(line, sizeof line - 1, format, args);
    va_end(args);
    if (length < 0 || length > (int)sizeof line - 2)
        return;
    line[length] = '\n';
    /* One write per line: a line is never split by another writer on the console. */
    if (write(STDOUT_FILENO, line, (size_t)length + 1) < 0)
        return;
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int find_nics(int sock)
{
    struct if_nameindex *names = if_nameindex();
    if (names == NULL)
        return -1;
    for (struct if_nameindex *n = names; n->if_index != 0 && nic_count < MAX_NICS; n++) {
        if (strncmp(n->if_name, "eth", 3) != 0)
            continue;
        struct ifreq request;
        memset(&request, 0, sizeof request);
        strncpy(request.ifr_name, n->if_name, IFNAMSIZ - 1);
        if (ioctl(sock, SIOCGIFHWADDR, &request) != 0)
            continue;
        const unsigned char *m = (const unsigned char *)request.ifr_hwaddr.sa_data;
        struct nic *nic = &nics[nic_count++];
        nic->index = (int)n->if_index;
        snprintf(nic->mac, sizeof nic->mac, "%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
    }
    if_freenameindex(names);
    return nic_count;
}

static struct nic *nic_of(int index)
{
    for (int i = 0; i < nic_count; i++)
        if (nics[i].index == index)
            return &nics[i];
    return NULL;
}

static uint64_t be64(const unsigned char *p)
{
    uint64_t value = 0;
    for (int i = 0; i < 8; i++)
        value = value << 8 | p[i];
    return value;
}

static void count(struct nic *nic, uint64_t sequence)
{
    nic->frames++;
    if (!nic->seen) {
        nic->seen = 1;
        nic->last = sequence;
        say("tally first %s %llu", nic->mac, (unsigned long long)sequence);
        return;
    }
    if (sequence <= nic->last) {
        say("tally late %s %llu", nic->mac, (unsigned long long)sequence);
        return;
    }
    if (sequence > nic->last + 1)
        say("tally gap %s %llu %llu", nic->mac, (unsigned long long)(nic->last + 1), (unsigned long long)(sequence - 1));
    nic->last = sequence;
}

int main(void)
{
    int sock = socket(AF_PACKET, SOCK_RAW, htons(CLIENT_ETHERTYPE));
    if (sock < 0) {
        say("tally error socket");
        return 1;
    }
    int size = 4 << 20;
    setsockopt(sock, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    if (find_nics(sock) <= 0) {
        say("tally error no eth interface");
        return 1;
    }
    char ready[160] = "tally ready";
    for (int i = 0; i < nic_count; i++) {
        strcat(ready, " ");
        strcat(ready, nics[i].mac);
    }
    say("%s", ready);
    unsigned char frame[2048];
    double next_sum = now() + 0.5;
    struct pollfd waiting = {.fd = sock, .events = POLLIN};
    for (;;) {
        int timeout = (int)((next_sum - now()) * 1000);
        if (timeout > 0 && poll(&waiting, 1, timeout) > 0) {
            struct sockaddr_ll from;
            socklen_t length = sizeof from;
            ssize_t got = recvfrom(sock, frame, sizeof frame, 0, (struct sockaddr *)&from, &length);
            struct nic *nic = nic_of(from.sll_ifindex);
            /* header 14, marker 8, sequence 8 (big-endian), send time 8 */
            if (got >= 30 && nic != NULL && from.sll_pkttype == PACKET_HOST && memcmp(frame + 14, "rarp-lab", 8) == 0)
                count(nic, be64(frame + 22));
        }
        if (now() >= next_sum) {
            for (int i = 0; i < nic_count; i++)
                say("tally sum %s %llu %llu", nics[i].mac, (unsigned long long)nics[i].frames, (unsigned long long)nics[i].last);
            struct tpacket_stats stats;
            socklen_t stats_length = sizeof stats;
            /* Reading the counters resets them (packet(7)), so they add up here. */
            if (getsockopt(sock, SOL_PACKET, PACKET_STATISTICS, &stats, &stats_length) == 0)
                socket_drops += stats.tp_drops;
            say("tally drops %llu", (unsigned long long)socket_drops);
            next_sum = now() + 0.5;
        }
    }
}
