/* The contract between bpf/redirect.c (kernel) and interceptor/redirect/bpf.py (user space).
 *
 * Every map: its key, its value, who writes it, who reads it, how long entries live.
 * Addresses are 16 bytes; IPv4 is stored v4-mapped (::ffff:a.b.c.d) so one key shape
 * serves both families. Ports are host byte order unless a field says otherwise.
 * Only uapi types are used, so headers of a slightly different kernel are safe.
 */
#ifndef INTERCEPTOR_REDIRECT_H
#define INTERCEPTOR_REDIRECT_H

#define MAX_CGROUP_DEPTH 16  /* ancestor levels searched for an agent cgroup */
#define AGENT_NONE 0xffffffff
#define AGENT_UNASSIGNED 0   /* the managed parent cgroup: a process there is denied everything */
#define RESOURCE_NONE 0      /* destination is no resource: the agent's `unprotected` setting decides */
#define DNS_PORT 53

/* Why a connect or send was refused; reported in struct deny_event. */
enum deny_reason {
    DENY_POLICY = 1,          /* the agent may not reach this resource (access map) */
    DENY_UNPROTECTED = 2,     /* destination is no resource and the agent's unprotected is deny */
    DENY_ENFORCER = 3,        /* the agent dialed the enforcer's own port */
    DENY_NETNS = 4,           /* agent in a network namespace other than the host's */
    DENY_UDP_PROTECTED = 5,   /* UDP to a resource address (QUIC etc. bypass the enforcer) */
    DENY_MAP_FULL = 6,        /* the origin record could not be stored: never let it through */
};

/* origins: u64 socket cookie -> struct origin.
 * Written by connect4/connect6 when they redirect; read and deleted by the enforcer after
 * accept(), which learns the agent socket's cookie from an exact inet_diag lookup of the
 * accepted connection's 4-tuple. LRU, so records of connects that never completed age out. */
struct origin {
    __u8  addr[16];      /* original destination address (v4-mapped for IPv4) */
    __u16 port;          /* original destination port */
    __u16 family;        /* AF_INET or AF_INET6: the socket's family */
    __u32 tgid;          /* connecting process */
    __u32 uid;
    __u32 gid;
    __u32 agent;         /* agent index (see agents) */
    __u32 resource;      /* resource index (see dests) */
    __u64 cgroup_id;     /* the connecting task's cgroup */
    __u64 netns_cookie;
    __u64 ktime_ns;      /* bpf_ktime_get_boot_ns() at connect: compared with process start times */
};

/* dests: LPM trie, struct dest_key -> struct dest. Written by user space from the policy's
 * resources (hostnames resolved and refreshed there). Looked up with the exact port and
 * then with port 0, which means "any port". */
struct dest_key {
    __u32 prefixlen;     /* 32 + address prefix bits (port and pad always match exactly) */
    __u16 port;
    __u16 pad;           /* zero */
    __u8  addr[16];
};
struct dest {
    __u32 resource;      /* resource index, >= 1 */
};

/* dest_ports: array of DEST_PORT_WORDS u64, a bitmap over ports: bit (port & 63) of word
 * (port >> 6) is set when some dests entry names that exact port. Written by user space
 * with dests (bits set before entries are added, cleared after they are removed), so
 * connect() to a port no resource uses skips the trie; "any port" entries are flagged in
 * config.flags instead. */
#define DEST_PORT_WORDS 1024

/* agent_cgroups: u64 cgroup id -> u32 agent index; the deepest matching ancestor wins.
 * agent_uids: u32 uid -> u32 agent index (uid agents; checked when no cgroup matches).
 * Written by user space from the policy. */

/* agents: array, agent index -> struct agent_conf. */
struct agent_conf {
    __u32 unprotected_allow;  /* 1: connections to non-resources pass untouched; 0: refused */
};

/* access: struct access_key -> __u32 (1 = the agent may connect to the resource; the
 * enforcer still judges every operation). Absent = refused at connect(). */
struct access_key {
    __u32 agent;
    __u32 resource;
};

/* config: array of one. Written by user space at start. */
struct config {
    __u32 enforcer_port;  /* where redirected connections go (loopback) */
    __u32 refuse_port;    /* bound, never listening: a connect there gets ECONNREFUSED */
    __u32 daemon_tgid;    /* the enforcer itself: never redirected (no loops) */
    __u32 flags;          /* CONFIG_* below */
    __u64 host_netns;     /* netns cookie of the host; agents elsewhere are refused */
};

#define CONFIG_ANY_PORT_DESTS 1  /* some dests entry has port 0 (any port) */
#define CONFIG_UID_AGENTS 2      /* agent_uids has entries */

/* deny_events: ring buffer of struct deny_event, one per refused connect/send, for audit. */
struct deny_event {
    __u8  addr[16];
    __u16 port;
    __u16 family;
    __u32 tgid;
    __u32 uid;
    __u32 agent;
    __u32 resource;
    __u32 reason;         /* enum deny_reason */
    __u32 protocol;       /* IPPROTO_TCP or IPPROTO_UDP */
    __u64 cgroup_id;
};

#endif
