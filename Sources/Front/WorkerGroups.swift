// Tensor-parallel groups in the worker pool (`switchyard serve --workers N --tp K`).
//
// A group is K worker processes that together hold one copy of the model; it is ONE routing target (one
// WorkerSlot, one router slot, the id X-Switchyard-Worker reports). Shard 0, the leader, is the process
// WorkerPool already knows: it alone has the request/response rings and the control block (heartbeat).
// Shards 1..K-1, the followers, get only the group memory and their rank:
//
//   leader:   switchyard worker --id G --parent P … --tp-rank 0 --tp-size K --tp-fd 7   (fds 3-6: rings, eventfd, control)
//   follower: switchyard worker --id G --parent P … --tp-rank r --tp-size K --tp-fd 3
//
// The group memory is an EMPTY memfd the pool creates for every (re)spawn of the group; the leader sizes and
// initializes it (the front never loads the model, so it cannot know the size) and followers wait for the
// leader to publish it. The pool keeps no reference to it: it lives as long as some shard maps it.
//
// Supervision treats the group as a unit: every shard's pidfd is in the pool's epoll set (tag: slot index
// in bits 0-15, rank in bits 16-31). When any shard exits, or the leader's heartbeat stops, the surviving
// shards are SIGKILLed, the group leaves routing, its requests are handled as for a dead worker (SSE error
// for started streams, re-route for not-started ones), and the whole group respawns with the pool's backoff.
// A follower that hangs blocks the leader's step, which stops the leader's heartbeat: the same path.
import CSwitchyardSys
import Glibc
import SysKit

/// A follower shard (rank ≥ 1) of a tensor-parallel group: its own process, no rings.
public struct FollowerSpec: Sendable {
    public var rank: Int
    /// Arguments after `worker --id G --parent PID` (engine, model, threads, placement, limits); the pool
    /// appends `--tp-rank/--tp-size/--tp-fd`.
    public var arguments: [String]
    public var numaNode: Int?
    public var cpus: [Int]
    public init(rank: Int, arguments: [String], numaNode: Int?, cpus: [Int]) {
        self.rank = rank; self.arguments = arguments; self.numaNode = numaNode; self.cpus = cpus
    }
}

/// A running follower process of a group.
final class FollowerSlot {
    let spec: FollowerSpec
    var process: ProcessHandle?
    init(spec: FollowerSpec) { self.spec = spec }
}

extension WorkerPool {
    /// Descriptor number of the group memory in the leader (after the rings, eventfd and control block).
    static let leaderGroupFD: Int32 = 7
    /// Descriptor number of the group memory in a follower.
    static let followerGroupFD: Int32 = 3

    /// "worker 3" for a plain worker, "group 3" for a tensor-parallel group (logs).
    func unitName(_ w: WorkerSlot) -> String {
        w.followers.isEmpty ? "worker \(w.spec.id)" : "group \(w.spec.id)"
    }

    /// "group 3 shard 1" (logs).
    func shardName(_ w: WorkerSlot, rank: Int) -> String {
        w.followers.isEmpty ? "worker \(w.spec.id)" : "group \(w.spec.id) shard \(rank)"
    }

    static func pidTag(slot: Int, rank: Int) -> UInt64 {
        tagPid | UInt64(rank & 0xFFFF) << 16 | UInt64(slot & 0xFFFF)
    }

    /// A fresh, empty group memfd (close-on-exec: only the inherited copies reach the shards).
    /// The caller closes it once every shard has inherited it.
    func makeGroupMemory(_ w: WorkerSlot) throws -> Int32 {
        let fd = sy_memfd_create("switchyard-tp-\(w.spec.id)", SY_MFD_CLOEXEC | SY_MFD_ALLOW_SEALING)
        guard fd >= 0 else { throw SysError.last("memfd_create(group \(w.spec.id))") }
        return fd
    }

    /// The leader's extra descriptor and arguments in a group.
    func leaderGroupArguments(_ w: WorkerSlot) -> [String] {
        ["--tp-rank", "0", "--tp-size", "\(w.spec.tpSize)", "--tp-fd", "\(Self.leaderGroupFD)"]
    }

    /// Starts every follower of group slot i with the group memory; throws (after killing the ones already
    /// started) when one cannot be spawned.
    func spawnFollowers(_ i: Int, groupFD: Int32) throws {
        let w = slots[i]
        for f in w.followers {
            let args = ["worker", "--id", "\(w.spec.id)", "--parent", "\(getpid())"] + f.spec.arguments
                + ["--tp-rank", "\(f.spec.rank)", "--tp-size", "\(w.spec.tpSize)", "--tp-fd", "\(Self.followerGroupFD)"]
            do {
                let child = try ChildProcess.spawn(path: config.executable, arguments: args,
                                                   inherit: [InheritedDescriptor(groupFD, as: Self.followerGroupFD)])
                let pid = child.pid
                let pidfd = child.pidfd.fd.rawValue
                f.process = ProcessHandle(child)
                try Self.check(sy_epoll_add(epoll.rawValue, pidfd, Self.pidTag(slot: i, rank: f.spec.rank)), "epoll_ctl(pidfd)")
                config.log(.info, "\(shardName(w, rank: f.spec.rank)): started pid \(pid)")
            } catch {
                stopFollowers(w)
                throw error
            }
        }
    }

    /// SIGKILLs every follower still running (before the leader is waited for, so a leader blocked on a
    /// dead shard cannot stall the event loop), removes their pidfds from epoll and reaps them.
    func stopFollowers(_ w: WorkerSlot) {
        for f in w.followers {
            guard let h = f.process else { continue }
            _ = sy_epoll_del(epoll.rawValue, h.child.pidfd.fd.rawValue)
            try? h.child.send(signal: SIGKILL)
        }
        for f in w.followers {
            guard let h = f.process else { continue }
            let status = (try? h.child.wait(timeoutMs: 1000)) ?? nil
            if let status { config.log(.info, "\(shardName(w, rank: f.spec.rank)): pid \(h.child.pid) \(status)") }
            f.process = nil                   // kills and reaps if it was still running
        }
    }

    /// Group slot i lost a shard (`rank`; 0 is the leader): the whole group goes down and restarts.
    func shardDied(_ i: Int, rank: Int) {
        let w = slots[i]
        if rank == 0 {
            workerDied(i, reason: "exited")
            return
        }
        // Only act on a follower of the current incarnation (an old one's event may arrive late).
        guard w.process != nil, let f = w.followers.first(where: { $0.spec.rank == rank }), let h = f.process,
              (try? h.child.pidfd.hasExited()) == true else { return }
        try? w.process?.child.send(signal: SIGKILL)
        workerDied(i, reason: "killed with its group because shard \(rank) (pid \(h.child.pid)) exited")
    }

    /// Live process ids of group slot i, leader first (tests and logs).
    func groupPIDs(_ i: Int) -> [Int32?] {
        [slots[i].process?.child.pid] + slots[i].followers.map { $0.process?.child.pid }
    }

    /// Per-group series: restarts of the group as a unit, and its shard count.
    func collectGroupMetrics(into m: MetricsRegistry) {
        for w in slots {
            let g = [("group", "\(w.spec.id)")]
            m.set("switchyard_group_restarts_total", help: "Restarts of a routing target (a worker, or a tensor-parallel group as a unit)",
                  labels: g, Double(w.restarts))
            m.set("switchyard_group_shards", help: "Worker processes per routing target (--tp)", labels: g, Double(w.spec.tpSize))
            m.set("switchyard_group_ready", help: "1 when every shard of the group is up and its leader ready", labels: g, w.ready ? 1 : 0)
        }
    }
}
