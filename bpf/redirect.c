/* Transparent redirection of agents' connections to the local enforcer.
 *
 * connect4/connect6 (cgroup sock_addr, attached at the cgroup-v2 root with ALLOW_MULTI):
 * for an agent's TCP connect to a resource it may reach, remember where it was going,
 * keyed by socket cookie, and rewrite the destination to the enforcer on loopback. The
 * enforcer finds the record after accept(): the kernel gives it the cookie of the agent's
 * socket for the accepted connection's 4-tuple (inet_diag). Everything refused is rewritten to
 * a port nobody listens on (the agent sees ECONNREFUSED) or fails with EPERM, and is
 * reported on deny_events. Non-agents return at the first check.
 */
#include <uapi/linux/bpf.h>
#include <linux/socket.h>
#include <linux/in.h>
#include "redirect.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#define SOCK_STREAM 1
#define SOCK_DGRAM 2

/* bcc declares bpf_get_socket_cookie as returning u32, which truncates the cookie. */
static u64 (*get_cookie)(void *ctx) = (void *)BPF_FUNC_get_socket_cookie;

BPF_TABLE("lru_hash", u64, struct origin, origins, 65536);
BPF_F_TABLE("lpm_trie", struct dest_key, struct dest, dests, 4096, BPF_F_NO_PREALLOC);
BPF_ARRAY(dest_ports, u64, DEST_PORT_WORDS);
BPF_HASH(agent_cgroups, u64, u32, 4096);
BPF_HASH(agent_uids, u32, u32, 1024);
BPF_ARRAY(agents, struct agent_conf, 1024);
BPF_HASH(access, struct access_key, u32, 65536);
BPF_ARRAY(config, struct config, 1);
BPF_RINGBUF_OUTPUT(deny_events, 16);

static __always_inline u32 find_agent(const struct config *cfg)
{
    u32 found = AGENT_NONE;
    if (cfg->flags & CONFIG_UID_AGENTS) {
        u32 uid = (u32)bpf_get_current_uid_gid();
        u32 *by_uid = agent_uids.lookup(&uid);
        if (by_uid)
            found = *by_uid;
    }
    /* The task's own cgroup is the deepest there is: when it is an agent's, no walk; when
     * not, the walk stops above it, so a non-agent pays no more lookups than before. */
    u64 own = bpf_get_current_cgroup_id();
    u32 *by_own = agent_cgroups.lookup(&own);
    if (by_own)
        return *by_own;
#pragma unroll
    for (int level = 1; level <= MAX_CGROUP_DEPTH; level++) {
        u64 id = bpf_get_current_ancestor_cgroup_id(level);
        if (id == 0 || id == own)
            break;  /* at (or past) the task's own cgroup, already looked up */
        u32 *by_cgroup = agent_cgroups.lookup(&id);
        if (by_cgroup)
            found = *by_cgroup;  /* keep going: the deepest agent cgroup wins */
    }
    return found;
}

static __always_inline u32 find_resource(const struct config *cfg, const u8 addr[16], u16 port)
{
    struct dest_key key = {.prefixlen = 32 + 128, .port = port};
    __builtin_memcpy(key.addr, addr, 16);
    struct dest *d = 0;
    u32 word = port >> 6;
    u64 *bits = dest_ports.lookup(&word);
    if (bits && (*bits & (1ULL << (port & 63))))
        d = dests.lookup(&key);
    if (!d && (cfg->flags & CONFIG_ANY_PORT_DESTS)) {
        key.port = 0;  /* "any port" entries */
        d = dests.lookup(&key);
    }
    return d ? d->resource : RESOURCE_NONE;
}

static __always_inline int is_loopback(const u8 addr[16])
{
    /* v4-mapped 127.0.0.0/8, or ::1 */
    if (addr[10] == 0xff && addr[11] == 0xff && addr[12] == 127)
        return 1;
    u64 hi, lo;
    __builtin_memcpy(&hi, addr, 8);
    __builtin_memcpy(&lo, addr + 8, 8);
    return hi == 0 && lo == bpf_htonll(1);
}

static __always_inline void report(const u8 addr[16], u16 port, u16 family, u32 agent,
                                   u32 resource, u32 reason, u32 protocol)
{
    struct deny_event ev = {};
    __builtin_memcpy(ev.addr, addr, 16);
    ev.port = port;
    ev.family = family;
    u64 pid_tgid = bpf_get_current_pid_tgid();
    ev.tgid = pid_tgid >> 32;
    ev.uid = (u32)bpf_get_current_uid_gid();
    ev.agent = agent;
    ev.resource = resource;
    ev.reason = reason;
    ev.protocol = protocol;
    ev.cgroup_id = bpf_get_current_cgroup_id();
    deny_events.ringbuf_output(&ev, sizeof(ev), 0);
}

/* Point the socket at loopback:port in the caller's address family. `v6` is a constant per
 * program: the verifier rejects any user_ip6 store in a connect4 program, even a dead one. */
static __always_inline void rewrite(struct bpf_sock_addr *ctx, int v6, int mapped, u32 port)
{
    if (!v6) {
        ctx->user_ip4 = bpf_htonl(0x7f000001);
    } else if (mapped) {
        ctx->user_ip6[0] = 0;
        ctx->user_ip6[1] = 0;
        ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
        ctx->user_ip6[3] = bpf_htonl(0x7f000001);
    } else {
        ctx->user_ip6[0] = 0;
        ctx->user_ip6[1] = 0;
        ctx->user_ip6[2] = 0;
        ctx->user_ip6[3] = bpf_htonl(1);
    }
    ctx->user_port = bpf_htons(port);
}

/* 1: let the syscall proceed (possibly rewritten); 0: fail it with EPERM. */
static __always_inline int handle(struct bpf_sock_addr *ctx, const u8 addr[16], int v6, int mapped,
                                  int is_send)
{
    u32 zero = 0;
    struct config *cfg = config.lookup(&zero);
    if (!cfg)
        return 0;  /* cannot happen for an array; fail closed anyway */
    u64 pid_tgid = bpf_get_current_pid_tgid();
    if ((pid_tgid >> 32) == cfg->daemon_tgid)
        return 1;  /* the enforcer's own upstream connections: never redirected */
    u32 agent = find_agent(cfg);
    if (agent == AGENT_NONE)
        return 1;  /* not an agent: untouched */

    u16 port = bpf_ntohs(ctx->user_port);
    u16 family = ctx->user_family;
    u32 proto = ctx->type == SOCK_DGRAM ? IPPROTO_UDP : IPPROTO_TCP;
    u32 resource = find_resource(cfg, addr, port);

    if (bpf_get_netns_cookie(ctx) != cfg->host_netns) {
        report(addr, port, family, agent, resource, DENY_NETNS, proto);
        return 0;
    }
    if (ctx->type == SOCK_DGRAM) {
        if (resource != RESOURCE_NONE) {
            report(addr, port, family, agent, resource, DENY_UDP_PROTECTED, proto);
            return 0;
        }
        if (port == DNS_PORT)
            return 1;  /* name resolution stays available to agents (documented) */
        struct agent_conf *ac = agents.lookup(&agent);
        if (ac && ac->unprotected_allow)
            return 1;
        report(addr, port, family, agent, resource, DENY_UNPROTECTED, proto);
        return 0;
    }
    if (ctx->type != SOCK_STREAM || is_send)
        return 1;  /* only TCP is redirected; other socket types never reach resources */

    if (is_loopback(addr) && (port == cfg->enforcer_port || port == cfg->refuse_port)) {
        report(addr, port, family, agent, resource, DENY_ENFORCER, proto);
        rewrite(ctx, v6, mapped, cfg->refuse_port);
        return 1;
    }
    if (resource == RESOURCE_NONE) {
        struct agent_conf *ac = agents.lookup(&agent);
        if (ac && ac->unprotected_allow)
            return 1;
        report(addr, port, family, agent, resource, DENY_UNPROTECTED, proto);
        rewrite(ctx, v6, mapped, cfg->refuse_port);
        return 1;
    }
    struct access_key ak = {.agent = agent, .resource = resource};
    if (!access.lookup(&ak)) {
        report(addr, port, family, agent, resource, DENY_POLICY, proto);
        rewrite(ctx, v6, mapped, cfg->refuse_port);
        return 1;
    }

    struct origin o = {};
    __builtin_memcpy(o.addr, addr, 16);
    o.port = port;
    o.family = family;
    o.tgid = pid_tgid >> 32;
    u64 uid_gid = bpf_get_current_uid_gid();
    o.uid = (u32)uid_gid;
    o.gid = uid_gid >> 32;
    o.agent = agent;
    o.resource = resource;
    o.cgroup_id = bpf_get_current_cgroup_id();
    o.netns_cookie = cfg->host_netns;
    o.ktime_ns = bpf_ktime_get_boot_ns();
    u64 cookie = get_cookie(ctx);
    if (origins.update(&cookie, &o) != 0) {
        report(addr, port, family, agent, resource, DENY_MAP_FULL, proto);
        return 0;  /* without a record the enforcer could not attribute it: refuse */
    }
    rewrite(ctx, v6, mapped, cfg->enforcer_port);
    return 1;
}

/* The destination as the maps key it: IPv4 v4-mapped. */
static __always_inline void load_ip4(struct bpf_sock_addr *ctx, u8 addr[16])
{
    u32 ip = ctx->user_ip4;
    __builtin_memset(addr, 0, 10);
    addr[10] = 0xff;
    addr[11] = 0xff;
    __builtin_memcpy(addr + 12, &ip, 4);
}

int icpt_connect4(struct bpf_sock_addr *ctx)
{
    u8 addr[16];
    load_ip4(ctx, addr);
    return handle(ctx, addr, 0, 1, 0);
}

static __always_inline int load_ip6(struct bpf_sock_addr *ctx, u8 addr[16])
{
    u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1], w2 = ctx->user_ip6[2], w3 = ctx->user_ip6[3];
    __builtin_memcpy(addr, &w0, 4);
    __builtin_memcpy(addr + 4, &w1, 4);
    __builtin_memcpy(addr + 8, &w2, 4);
    __builtin_memcpy(addr + 12, &w3, 4);
    /* ::ffff:a.b.c.d is IPv4 through a dual-stack socket: judged like connect4 */
    return w0 == 0 && w1 == 0 && w2 == bpf_htonl(0x0000ffff);
}

int icpt_connect6(struct bpf_sock_addr *ctx)
{
    u8 addr[16];
    int mapped = load_ip6(ctx, addr);
    return handle(ctx, addr, 1, mapped, 0);
}

int icpt_sendmsg4(struct bpf_sock_addr *ctx)
{
    u8 addr[16];
    load_ip4(ctx, addr);
    return handle(ctx, addr, 0, 1, 1);
}

int icpt_sendmsg6(struct bpf_sock_addr *ctx)
{
    u8 addr[16];
    int mapped = load_ip6(ctx, addr);
    return handle(ctx, addr, 1, mapped, 1);
}
