// Tensor-parallel groups end to end (issue 7): `switchyard serve --workers N --tp K` runs N/K groups of K
// worker processes; each group is one routing target. The model tests need SWITCHYARD_MODEL (or models/…)
// and the fidelity prompts of ../shared/fixtures/llama-cpp-goldens.json; without them they fail, naming
// tools/fetch-model.
import ClientKit
import Foundation
import Glibc
import Testing

/// Fidelity prompts (indices into the goldens' `greedy` list) whose greedy answer does not start at a
/// near-tie: a group sums each projection's partials in a different order than one whole-model worker, so
/// where the top two logits are within a few hundredths (the haiku prompt's FIRST token is 0.0011 apart in
/// llama.cpp's own logits) --tp 2 and --tp 1 may pick different tokens. Prompts 1, 5, 7, 9 and 12 part early;
/// on these the texts share at least their start (prompt 0 parts after 8 tokens with llama.cpp's summation
/// order); the engine's TP tests bound the logit differences.
let tpFidelityPrompts = [0, 2, 3, 4, 6]

/// The `greedy` users of the llama.cpp goldens (the fidelity prompts).
func fidelityUsers(_ indices: [Int]) throws -> [String] {
    let path = ProcessInfo.processInfo.environment["SWITCHYARD_FIXTURES"].map { $0 + "/llama-cpp-goldens.json" }
        ?? Paths.packageRoot + "/../shared/fixtures/llama-cpp-goldens.json"
    guard let data = FileManager.default.contents(atPath: path),
          let o = try JSONSerialization.jsonObject(with: data) as? [String: Any],
          let greedy = o["greedy"] as? [[String: Any]] else {
        throw HarnessError("fixture \(path) is missing or has no `greedy` list (see ../shared/fixtures/README.md; tools/fetch-model fetches the model)")
    }
    let users = greedy.compactMap { $0["user"] as? String }
    guard let last = indices.max(), users.count > last else { throw HarnessError("fixture \(path) has \(users.count) greedy prompts, need \((indices.max() ?? 0) + 1)") }
    return indices.map { users[$0] }
}

func tpArgs(workers: Int, tp: Int, numa: String = "off", extra: [String] = []) throws -> [String] {
    ["--engine", "model", "--model", try Paths.model(), "--workers", "\(workers)", "--tp", "\(tp)", "--numa", numa,
     "--threads-per-worker", "1", "--session-cache-mb", "64"] + extra
}

/// A greedy chat completion (temperature 0); returns (content, X-Switchyard-Worker).
func greedyChat(_ s: Server, _ user: String, maxTokens: Int = 16, session: String? = nil) throws -> (String, String) {
    let r = try s.request("POST", "/v1/chat/completions",
                          json: ["messages": [["role": "user", "content": user]], "max_tokens": maxTokens, "temperature": 0],
                          headers: session.map { [("X-Session-Id", $0)] } ?? [], timeout: 120)
    guard r.head.status == 200,
          let msg = ((jsonObject(r.body)?["choices"] as? [[String: Any]])?.first?["message"] as? [String: Any]),
          let text = msg["content"] as? String else {
        throw HarnessError("chat completion failed: HTTP \(r.head.status) \(r.text)")
    }
    return (text, r.head.header("x-switchyard-worker") ?? "none")
}

struct ShardID: Hashable, CustomStringConvertible {
    var group: Int
    var rank: Int
    var description: String { "\(group).\(rank)" }
}

extension Server {
    /// Live shard processes, from their command lines `switchyard worker --id G … [--tp-rank R]`.
    func shards() -> [ShardID: pid_t] {
        var out: [ShardID: pid_t] = [:]
        for c in Proc.children(of: pid) {
            let args = Proc.cmdline(c)
            guard args.count > 1, args[1] == "worker", let i = args.firstIndex(of: "--id"), i + 1 < args.count,
                  let g = Int(args[i + 1]) else { continue }
            let rank = args.firstIndex(of: "--tp-rank").flatMap { $0 + 1 < args.count ? Int(args[$0 + 1]) : nil } ?? 0
            out[ShardID(group: g, rank: rank)] = c
        }
        return out
    }

    /// Waits until exactly `expected` shards run; returns them.
    func waitShards(_ expected: Set<ShardID>, timeout: Double = 30) throws -> [ShardID: pid_t] {
        var s: [ShardID: pid_t] = [:]
        guard waitUntil(timeout, { s = shards(); return Set(s.keys) == expected }) else {
            throw HarnessError("expected shards \(expected.sorted { "\($0)" < "\($1)" }), found \(s); log:\n\(logTail())")
        }
        return s
    }

    /// The value of a metric line that starts with `prefix` (name and labels), or nil.
    func metric(_ prefix: String) throws -> Double? {
        let text = try request("GET", "/metrics").text
        return text.split(separator: "\n").first { $0.hasPrefix(prefix + " ") }
            .flatMap { Double($0.split(separator: " ").last ?? "") }
    }
}

func allShards(groups: Int, tp: Int) -> Set<ShardID> {
    Set((0..<groups).flatMap { g in (0..<tp).map { ShardID(group: g, rank: $0) } })
}

@Suite(.serialized) struct TensorParallelEndToEndTests {
    /// Bad --tp values stop `serve` before any worker starts, with a message naming the rule.
    @Test func invalidTPValuesGiveClearErrors() throws {
        let model = try Paths.model()
        let cases: [([String], String)] = [
            (["--engine", "echo", "--workers", "3", "--tp", "2"], "--tp 2 must divide --workers 3"),
            (["--engine", "echo", "--workers", "2", "--tp", "0"], "--tp must be 1...16"),
            (["--engine", "echo", "--workers", "34", "--tp", "17"], "--tp must be 1...16"),
            (["--engine", "model", "--model", model, "--workers", "4", "--tp", "4"], "this model has 3 KV heads"),
        ]
        for (args, message) in cases {
            let s = try Server.launch(args)
            defer { s.stop(); s.cleanUp() }
            #expect(s.waitExit(timeout: 30), "serve \(args) did not exit")
            #expect(s.exitCode.map { $0 != 0 } == true, "serve \(args): \(s.describeStatus())")
            #expect(s.log.contains(message), "serve \(args): the error does not say '\(message)':\n\(s.logTail())")
            #expect(s.shards().isEmpty)
        }
    }

    /// `--workers 2 --tp 2` (one group of two shard processes) answers the fidelity prompts like
    /// `--workers 1 --tp 1` (same start, mostly the same text), streamed as not; the group is routing target 0; both shards are
    /// pinned (--numa auto), each to its own CPU when the machine has two.
    @Test func aTwoShardGroupAnswersLikeOneWholeModelWorker() throws {
        let users = try fidelityUsers(tpFidelityPrompts)
        var reference: [String] = []
        try withServer(try tpArgs(workers: 1, tp: 1), readyTimeout: 120) { s in
            for u in users { reference.append(try greedyChat(s, u).0) }
        }
        // /health answers 503 until the whole group is ready, then 200.
        let s = try Server.launch(try tpArgs(workers: 2, tp: 2, numa: "auto"))
        defer { s.stop() }
        var statuses: [Int] = []
        let healthy = waitUntil(120) {
            let st = (try? s.request("GET", "/health", timeout: 5).head.status) ?? 0
            if st != 0 && statuses.last != st { statuses.append(st) }
            return st == 200 || s.reap(block: false)
        }
        try #require(healthy && statuses.last == 200, "never healthy: \(statuses); log:\n\(s.logTail())")
        #expect(statuses.first == 503, "/health while the group loads, then ready: \(statuses)")
        let shards = try s.waitShards(allShards(groups: 1, tp: 2))
        // The leader's warm-up step runs through the follower, so the group is ready only after its follower
        // attached (the follower logs before it executes its first command).
        let log = s.log
        let attached = log.range(of: "worker 0 shard 1/2 attached"), ready = log.range(of: "group 0: ready (pid")
        let order = attached.flatMap { a in ready.map { a.lowerBound < $0.lowerBound } }
        #expect(order == true, "the follower's attach line does not precede the group's ready line:\n\(s.logTail())")
        // A group changes only the float summation order of the two split projections (see ARCHITECTURE,
        // "Numerics"), so greedy texts may part at a near-tie; they start alike, and most stay identical.
        var group: [String] = [], identical = 0
        for (i, u) in users.enumerated() {
            let (text, worker) = try greedyChat(s, u)
            group.append(text)
            let common = zip(text, reference[i]).prefix { $0 == $1 }.count
            #expect(common >= min(8, reference[i].count), "prompt \(u.debugDescription): --tp 2 says \(text.debugDescription), --tp 1 says \(reference[i].debugDescription)")
            if text == reference[i] { identical += 1 }
            #expect(worker == "0", "X-Switchyard-Worker names the group: \(worker)")
        }
        #expect(2 * identical >= users.count, "only \(identical) of \(users.count) texts identical to --tp 1: \(group) vs \(reference)")
        // Streaming through the group gives the same text.
        let conn = HTTPConnection(endpoint: s.endpoint, timeout: 60)
        defer { conn.close() }
        let r = try streamRequest(conn, path: "/v1/chat/completions",
                                  json: ["messages": [["role": "user", "content": users[0]]], "max_tokens": 16,
                                         "temperature": 0, "stream": true])
        #expect(r.head.status == 200)
        #expect(r.errors.isEmpty, "\(r.errors)")
        #expect(r.endsWithDone)
        #expect(r.text == group[0], "streamed \(r.text.debugDescription) vs \(group[0].debugDescription)")

        // Pinning: each shard process (all its threads) on one CPU; two CPUs → different ones.
        var pinned: [Set<Int>] = []
        for (id, pid) in shards.sorted(by: { $0.key.rank < $1.key.rank }) {
            let cpus = Proc.status(pid, "Cpus_allowed_list").map { Set(Proc.expandCPUList($0)) } ?? []
            #expect(cpus.count == 1, "shard \(id) (pid \(pid)) is allowed on \(cpus)")
            pinned.append(cpus)
        }
        let online = Proc.status(getpid(), "Cpus_allowed_list").map(Proc.expandCPUList) ?? []
        if online.count >= 2 { #expect(pinned.count == 2 && pinned[0] != pinned[1], "both shards on \(pinned)") }
        #expect(try s.metric("switchyard_group_shards{group=\"0\"}") == 2)
        #expect(try s.metric("switchyard_group_ready{group=\"0\"}") == 1)

        // SIGTERM: the leader tells its follower to stop; both exit 0 without being killed.
        s.stop()
        #expect(s.exitCode == 0, "serve: \(s.describeStatus())")
        #expect(s.log.contains("worker 0 shard 1/2 stopping (leader shut the group down)"), "follower did not stop cleanly:\n\(s.logTail())")
        #expect(!s.log.contains("did not stop in time"), "shards had to be killed:\n\(s.logTail())")
        s.cleanUp()
    }

    /// Placement by group (echo engine, so no model: its group stand-in starts, attaches and stops like a
    /// model group): with two two-CPU nodes, `--workers 4 --tp 2` keeps each group's two shards on one node
    /// and the two groups on different nodes; each shard process is pinned as the log says. (The injected
    /// nodes list the same two real CPUs, so the test runs on a 2-core machine; placement only reads the
    /// lists. With one-CPU nodes no node could hold a group, and its shards would be spread instead.)
    @Test func eachGroupIsPlacedOnOneNode() throws {
        let (a, b) = twoUsableCPUs()
        let topo = try writeTopology([[a, b], [a, b]])
        defer { try? FileManager.default.removeItem(atPath: topo) }
        try withServer(["--engine", "echo", "--workers", "4", "--tp", "2", "--numa", "auto"],
                       env: ["SWITCHYARD_NUMA_TOPOLOGY": topo]) { s in
            let shards = try s.waitShards(allShards(groups: 2, tp: 2))
            var nodeOf: [ShardID: Int] = [:]
            for (id, pid) in shards {
                let line = try #require(s.log.split(separator: "\n").first { $0.contains("group \(id.group) shard \(id.rank) (") && $0.contains(": node ") },
                                        "no placement line for shard \(id)")
                let node = line.range(of: ": node ").flatMap { Int(line[$0.upperBound...].prefix { $0.isNumber }) }
                let cpus = line.range(of: "cpus ").map { Set(line[$0.upperBound...].split(separator: ",").compactMap { Int($0) }) } ?? []
                nodeOf[id] = node
                let allowed = Proc.status(pid, "Cpus_allowed_list").map { Set(Proc.expandCPUList($0)) }
                #expect(allowed == cpus && !cpus.isEmpty, "shard \(id): log says cpus \(cpus), process allowed on \(allowed ?? [])")
            }
            for g in 0..<2 {
                #expect(nodeOf[ShardID(group: g, rank: 0)] != nil && nodeOf[ShardID(group: g, rank: 0)] == nodeOf[ShardID(group: g, rank: 1)],
                        "group \(g) is split over nodes: \(nodeOf)")
            }
            #expect(nodeOf[ShardID(group: 0, rank: 0)] != nodeOf[ShardID(group: 1, rank: 0)], "both groups on one node: \(nodeOf)")
            let r = try s.request("POST", "/v1/completions", json: ["prompt": "grouped", "max_tokens": 16])
            #expect(r.head.status == 200 && ["0", "1"].contains(r.head.header("x-switchyard-worker") ?? ""))
            #expect(((jsonObject(r.body)?["choices"] as? [[String: Any]])?.first?["text"]) as? String == "grouped")
            s.stop()
            #expect(s.exitCode == 0, "serve: \(s.describeStatus())")
            #expect(s.log.components(separatedBy: "stopping (leader shut the group down)").count - 1 == 2, "followers did not stop cleanly:\n\(s.logTail())")
            #expect(!s.log.contains("did not stop in time"))
        }
    }

    /// kill -9 of the FOLLOWER mid-stream: the stream ends with an SSE error event, the group restarts as a
    /// unit (both shards get new pids; the old leader is gone), and a later request succeeds.
    @Test func killingTheFollowerMidStreamRestartsTheGroupAsAUnit() throws {
        try withServer(try tpArgs(workers: 2, tp: 2), readyTimeout: 120) { s in
            let before = try s.waitShards(allShards(groups: 1, tp: 2))
            let leader = try #require(before[ShardID(group: 0, rank: 0)])
            let follower = try #require(before[ShardID(group: 0, rank: 1)])
            let conn = HTTPConnection(endpoint: s.endpoint, timeout: 60)
            defer { conn.close() }
            var killed = false
            let r = try streamRequest(conn, path: "/v1/chat/completions",
                                      json: ["messages": [["role": "user", "content": "What is the capital of France?"]],
                                             "max_tokens": 1500, "temperature": 0, "stream": true],
                                      onEvent: { i, _ in
                if i == 2 && !killed { killed = true; kill(follower, SIGKILL) }
                return true
            })
            #expect(killed, "the stream ended before the follower was killed: \(r.events.suffix(3))")
            #expect(r.head.status == 200)
            #expect(r.errors.count == 1, "expected one SSE error event; the stream ends with \(r.events.suffix(3))")
            #expect(r.endsWithDone, "after the error event the stream ends with [DONE]: \(r.events.suffix(2))")
            #expect(r.finishReason != "stop" && r.finishReason != "length", "finish reason \(r.finishReason ?? "nil")")

            // The whole group restarts: new pids for both shards, the old leader is gone.
            var after: [ShardID: pid_t] = [:]
            #expect(waitUntil(60) {
                after = s.shards()
                guard let l = after[ShardID(group: 0, rank: 0)], let f = after[ShardID(group: 0, rank: 1)] else { return false }
                return l != leader && f != follower
            }, "the group was not restarted as a unit: before \(before), now \(after)")
            #expect(Proc.isGone(leader), "the old leader (pid \(leader)) still runs")
            #expect(Proc.isGone(follower))
            #expect(waitUntil(120) { (try? s.request("GET", "/health").head.status) == 200 }, "not healthy again")
            let (text, worker) = try greedyChat(s, "What is 2 + 2?", maxTokens: 8)
            #expect(!text.isEmpty && worker == "0")
            #expect(try s.metric("switchyard_group_restarts_total{group=\"0\"}") == 1)
            #expect(s.log.contains("group 0 shard 1: pid \(follower) killed by signal 9"), "the log does not name the dead shard:\n\(s.logTail())")
            // (Whether the front or the leader — its group wait sees the dead peer — acts first, the leader is
            // logged as gone: "killed with its group because shard 1 … exited", or "exited (… status 1)".)
            #expect(s.log.contains("group 0 shard 0: killed with its group because shard 1 (pid \(follower)) exited")
                    || s.log.contains("group 0 shard 0: exited"), "the log does not say the leader went down:\n\(s.logTail())")
        }
    }

    /// `--workers 4 --tp 2`: two groups. (A) A request queued on group 0 whose leader is frozen moves to group
    /// 1 when group 0's follower dies (the frozen leader is killed with it). (B) Killing the LEADER of group 1
    /// leaves group 0 serving throughout; each killed group comes back as a unit, the other keeps its pids.
    @Test func killingOneGroupLeavesTheOtherServing() throws {
        try withServer(try tpArgs(workers: 4, tp: 2), readyTimeout: 180) { s in
            let first = try s.waitShards(allShards(groups: 2, tp: 2))
            // A session routed to each group.
            var sessionFor: [String: String] = [:]
            for i in 0..<64 where sessionFor.count < 2 {
                let (_, w) = try greedyChat(s, "Hi", maxTokens: 1, session: "probe-\(i)")
                if sessionFor[w] == nil { sessionFor[w] = "probe-\(i)" }
            }
            let session0 = try #require(sessionFor["0"], "no session routed to group 0: \(sessionFor)")
            let session1 = try #require(sessionFor["1"], "no session routed to group 1: \(sessionFor)")
            func pids(_ shards: [ShardID: pid_t], group g: Int) -> [pid_t?] { [shards[ShardID(group: g, rank: 0)], shards[ShardID(group: g, rank: 1)]] }
            func restarted(_ g: Int, from old: [pid_t?]) -> Bool {
                let now = pids(s.shards(), group: g)
                return now[0] != nil && now[1] != nil && now[0] != old[0] && now[1] != old[1]
                    && (try? s.request("GET", "/health").head.status) == 200
            }

            // (A) Freeze group 0's leader, queue a request on it, kill group 0's follower.
            let group0 = pids(first, group: 0)
            let leader0 = try #require(group0[0]), follower0 = try #require(group0[1])
            kill(leader0, SIGSTOP)
            final class Box: @unchecked Sendable { var result: Result<HTTPResponse, Error>? }   // written before done.leave
            let box = Box()
            let done = DispatchGroup()
            done.enter()
            let endpoint = s.endpoint
            Thread {
                let c = HTTPConnection(endpoint: endpoint, timeout: 60)
                box.result = Result { try c.request(method: "POST", path: "/v1/chat/completions", headers: [("X-Session-Id", session0)],
                                                    body: jsonBytes(["messages": [["role": "user", "content": "What is 2 + 2?"]],
                                                                     "max_tokens": 4, "temperature": 0])) }
                done.leave()
            }.start()
            usleep(300_000)
            #expect(done.wait(timeout: .now()) == .timedOut, "the request finished although group 0's leader was stopped")
            kill(follower0, SIGKILL)
            #expect(done.wait(timeout: .now() + 30) == .success, "the request hung after its group died")
            let moved = try #require(try box.result?.get())
            #expect(moved.head.status == 200, "\(moved.text)")
            #expect(moved.head.header("x-switchyard-worker") == "1", "served by \(moved.head.header("x-switchyard-worker") ?? "none")")
            #expect(waitUntil(60) { restarted(0, from: group0) }, "group 0 did not come back as a unit: \(s.shards())")
            #expect(Proc.isGone(leader0), "group 0's frozen leader (pid \(leader0)) survived its follower")
            #expect(pids(s.shards(), group: 1) == pids(first, group: 1), "group 1 was restarted too")

            // (B) Kill group 1's leader; until group 1 is back, group 0 answers every request of its session.
            let group1 = pids(first, group: 1)
            let leader1 = try #require(group1[0]), follower1 = try #require(group1[1])
            let group0Now = pids(s.shards(), group: 0)
            kill(leader1, SIGKILL)
            var served = 0
            var back = false
            let deadline = Date().addingTimeInterval(90)
            while Date() < deadline && !back {
                let (text, w) = try greedyChat(s, "What is 2 + 2?", maxTokens: 4, session: session0)
                #expect(w == "0" && !text.isEmpty, "the surviving group answered from \(w): \(text.debugDescription)")
                served += 1
                back = restarted(1, from: group1)
            }
            #expect(back, "group 1 did not come back as a unit: \(s.shards())")
            #expect(served >= 1)
            #expect(Proc.isGone(follower1), "group 1's follower (pid \(follower1)) survived its leader")
            #expect(pids(s.shards(), group: 0) == group0Now, "group 0 was restarted too")
            #expect(try s.metric("switchyard_group_restarts_total{group=\"0\"}") == 1)
            #expect(try s.metric("switchyard_group_restarts_total{group=\"1\"}") == 1)
            let (_, w1) = try greedyChat(s, "What is 2 + 2?", maxTokens: 4, session: session1)
            #expect(w1 == "1", "group 1 serves its sessions again: \(w1)")
        }
    }

    /// A follower that hangs (SIGSTOP) stalls its leader's next step, so the leader's heartbeat stops and the
    /// front kills and restarts the group; the request in flight gets an error instead of hanging forever.
    @Test func aHungFollowerIsCaughtByTheLeadersHeartbeat() throws {
        try withServer(try tpArgs(workers: 2, tp: 2, extra: ["--heartbeat-timeout", "1"]), readyTimeout: 120) { s in
            let before = try s.waitShards(allShards(groups: 1, tp: 2))
            let follower = try #require(before[ShardID(group: 0, rank: 1)])
            kill(follower, SIGSTOP)
            defer { kill(follower, SIGCONT) }
            let r = try s.request("POST", "/v1/chat/completions",
                                  json: ["messages": [["role": "user", "content": "Hi"]], "max_tokens": 8, "temperature": 0],
                                  timeout: 60)
            #expect(r.head.status >= 500, "a request on a group with a stopped shard: HTTP \(r.head.status) \(r.text)")
            #expect(waitUntil(60) {
                let now = s.shards()
                return now[ShardID(group: 0, rank: 1)].map { $0 != follower } ?? false
                    && (try? s.request("GET", "/health").head.status) == 200
            }, "the group was not restarted: \(s.shards())")
            #expect(s.log.contains("heartbeat stopped"), "no heartbeat message:\n\(s.logTail())")
            let (text, _) = try greedyChat(s, "What is 2 + 2?", maxTokens: 4)
            #expect(!text.isEmpty)
        }
    }
}
