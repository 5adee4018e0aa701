import Testing
import Foundation
@testable import BenchKit
@testable import ClientKit

@Suite(.serialized) struct ClientTests {
    @Test func sseParserHandlesAnySplit() {
        let text = "retry: 5\n: comment\ndata: {\"a\":1}\r\n\r\nevent: x\ndata: line1\ndata: line2\n\ndata: [DONE]\n\n"
        let bytes = Array(text.utf8)
        // Every split point gives the same events.
        for cut in 0...bytes.count {
            var p = SSEParser()
            var got: [String] = []
            _ = p.feed(bytes[0..<cut], now: 1) { got.append($0.data); return true }
            _ = p.feed(bytes[cut...], now: 2) { got.append($0.data); return true }
            #expect(got == ["{\"a\":1}", "line1\nline2", "[DONE]"], "cut \(cut)")
        }
        var p = SSEParser()
        var stopped = 0
        let ok = p.feed(bytes[...], now: 0) { _ in stopped += 1; return false }
        #expect(!ok && stopped == 1)
    }

    @Test func endpointParsing() throws {
        #expect(try Endpoint.parse(url: "http://127.0.0.1:8080") == .tcp(host: "127.0.0.1", port: 8080))
        #expect(try Endpoint.parse(url: "http://localhost/v1") == .tcp(host: "localhost", port: 80))
        #expect(try Endpoint.parse(url: "http://[::1]:9000/x") == .tcp(host: "::1", port: 9000))
        #expect(throws: ClientError.invalidURL("https://x")) { try Endpoint.parse(url: "https://x") }
        #expect(throws: ClientError.self) { try Endpoint.parse(url: "http://h:99999") }
        #expect(throws: ClientError.self) { try Endpoint.parse(url: "http://:80") }
    }

    @Test func missingSocketIsATypedError() {
        let c = HTTPConnection(endpoint: .unix(path: "/tmp/definitely-not-here.sock"), timeout: 2)
        #expect(throws: ClientError.noServer(path: "/tmp/definitely-not-here.sock")) { try c.connect() }
        #expect(ClientError.noServer(path: "/x.sock").description == "no server at /x.sock (is `switchyard serve` running?)")
        let long = String(repeating: "a", count: 200)
        #expect(throws: ClientError.pathTooLong(long)) { try HTTPConnection(endpoint: .unix(path: long)).connect() }
    }

    @Test func framingsAndErrors() throws {
        let server = try FakeServer()
        defer { server.shutdownServer() }
        let c = HTTPConnection(endpoint: .unix(path: server.path), timeout: 5)
        let plain = try c.request(method: "GET", path: "/plain")
        #expect(plain.head.status == 200 && plain.text == "hello")
        let chunked = try c.request(method: "GET", path: "/chunked")
        #expect(chunked.text == "abcdefg")
        let loading = try c.request(method: "GET", path: "/loading")
        #expect(loading.head.status == 503)
        #expect(loading.head.error(body: loading.text) == .serverLoading(retryAfter: 5))
        let busy = try c.request(method: "GET", path: "/busy")
        #expect(busy.head.error(body: busy.text) == .overloaded(retryAfter: 1))
        // All of the above reused one kept-alive connection.
        #expect(server.connections == 1)
        let closing = try c.request(method: "GET", path: "/close")
        #expect(closing.text == "until-close")
        #expect(!c.isOpen)
        _ = try c.request(method: "GET", path: "/plain")  // reconnects
        #expect(server.connections == 2)
        #expect(throws: ClientError.self) { try c.request(method: "GET", path: "/garbage") }
        // The chat layer turns 503 into its typed error.
        let chat = ChatClient(endpoint: .unix(path: server.path), timeout: 5)
        chat.path = "/loading"
        #expect(throws: ClientError.serverLoading(retryAfter: 5)) {
            try chat.complete(ChatRequest(messages: [ChatMessage(role: "user", content: "hi")]))
        }
        // An SSE error event after content is an error, not a short answer.
        let broken = ChatClient(endpoint: .unix(path: server.path), timeout: 5)
        broken.path = "/streamerror"
        var seen = ""
        #expect(throws: ClientError.streamError(message: "worker 0 exited")) {
            try broken.complete(ChatRequest(messages: [ChatMessage(role: "user", content: "hi")])) { seen += $0 }
        }
        #expect(seen == "part")
        // No "model" in the body unless one is given.
        let body = String(decoding: try ChatRequest(messages: []).jsonBody(), as: UTF8.self)
        #expect(!body.contains("\"model\""))
        #expect(String(decoding: try ChatRequest(messages: [], model: "m").jsonBody(), as: UTF8.self).contains(#""model":"m""#))
    }

    @Test func loadingVersusOverloaded503() {
        func head503(_ headers: [HTTPHead.HeaderField] = []) -> HTTPHead {
            HTTPHead(status: 503, reason: "Service Unavailable", headers: headers)
        }
        let loading: [String] = [
            #"{"error":{"message":"not ready: no worker is ready","type":"server_error","param":null,"code":"not_ready"}}"#,
            #"{"status":"loading","workers_ready":0,"workers_total":2}"#,
            #"{ "error": { "code" : "not_ready" } }"#,
            #"{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}"#,  // llama-server
        ]
        for b in loading { #expect(head503().error(body: b) == .serverLoading(retryAfter: nil), "\(b)") }
        let busy: [String] = [
            #"{"error":{"message":"all workers are busy; retry later","type":"server_error","param":null,"code":"overloaded"}}"#,
            "busy", "", #"{"error":{"message":"overloaded while loading was done","code":"overloaded"}}"#,
        ]
        for b in busy { #expect(head503().error(body: b) == .overloaded(retryAfter: nil), "\(b)") }
        let retry = head503([.init(name: "retry-after", value: "1")])
        #expect(retry.error(body: loading[0]) == .serverLoading(retryAfter: 1))
        #expect(HTTPHead(status: 500, reason: "x", headers: []).error(body: loading[0]) == .httpStatus(code: 500, body: loading[0]))
        #expect(ClientError.serverLoading(retryAfter: 1).description.contains("still loading"))
    }

    @Test func streamingChat() throws {
        let server = try FakeServer(tokenDelayUs: 30_000)
        defer { server.shutdownServer() }
        let chat = ChatClient(endpoint: .unix(path: server.path), timeout: 5)
        var pieces: [String] = []
        let req = ChatRequest(messages: [ChatMessage(role: "user", content: "one two three")], maxTokens: 5, sessionID: "s1")
        let r = try chat.complete(req) { pieces.append($0) }
        #expect(r.text == "t0 t1 t2 t3 t4")
        #expect(pieces.count == 5)
        #expect(r.chunkNs.count == 5)
        #expect(r.usage == ChatUsage(promptTokens: 3, completionTokens: 5, cachedTokens: 0))
        #expect(r.finishReason == "length")
        #expect(r.worker == "w0" || r.worker == "w1")
        // Chunks were timestamped as they arrived (30 ms apart on the server side), not all at the end; half
        // the server-side span leaves room for scheduling delays on a loaded machine.
        let span = r.chunkNs.last! - r.chunkNs.first!
        #expect(span >= 60_000_000, "chunks span \(span) ns")
        #expect(r.chunkNs.first! > r.sentNs && r.doneNs >= r.chunkNs.last!)
        // Non-streamed.
        var ns = req
        ns.stream = false
        let j = try chat.complete(ns)
        #expect(j.text == "t0 t1 t2 t3 t4")
        #expect(j.raw.contains("\"choices\""))
    }

    @Test func closedLoopBenchEndToEnd() throws {
        let server = try FakeServer(tokenDelayUs: 300)
        defer { server.shutdownServer() }
        let w = try SessionWorkload(sessions: 4, turns: 3, promptTokens: .parse("30:5"), seed: 5)
        var cfg = ServeBenchConfig(endpoint: .unix(path: server.path), workload: w, mode: .closedLoop(concurrency: 2))
        cfg.requests = 12
        cfg.warmup = 2
        cfg.maxTokens = 6
        cfg.slo = try GoodputSLO.parse("ttft:5000,tpot:5000")
        let runner = try ServeBenchRunner(config: cfg)
        let res = runner.run()
        let s = res.summary
        #expect(s.requests == 12)
        #expect(s.completed == 12)
        #expect(s.errors.isEmpty)
        #expect(s.outputTokens == 12 * 6)
        #expect(s.affinity == 1.0)  // the fake server pins each session to one worker
        #expect((s.cacheHitRate ?? 0) > 0)
        #expect(s.ttft.count == 12 && s.ttft.p50Ms > 0)
        #expect(s.tpot.count == 12)
        #expect(s.itl.count == 12 * 5)
        #expect(s.goodput != nil)
        #expect(s.perWorker.values.reduce(0, +) == 12)
        #expect(server.requests == 14)
        #expect(res.ttftOverTime.count == 12)
    }

    @Test func openLoopBench() throws {
        let server = try FakeServer(tokenDelayUs: 100)
        defer { server.shutdownServer() }
        let w = try SessionWorkload(sessions: 8, turns: 2, promptTokens: .parse("10"), seed: 6)
        var cfg = ServeBenchConfig(endpoint: .unix(path: server.path), workload: w,
                                   mode: .openLoop(try ArrivalProcess(rate: 200), maxInFlight: 8))
        cfg.requests = 30
        cfg.maxTokens = 3
        let t0 = Date()
        let res = try ServeBenchRunner(config: cfg).run()
        #expect(res.summary.completed == 30)
        #expect(res.summary.errors.isEmpty)
        // 30 arrivals at 200/s take about 0.15 s: the run paces itself instead of firing all at once.
        #expect(Date().timeIntervalSince(t0) > 0.05)
    }

    @Test func benchAgainstNoServerCountsErrors() throws {
        let w = try SessionWorkload(sessions: 2, turns: 1, promptTokens: .parse("5"), seed: 1)
        var cfg = ServeBenchConfig(endpoint: .unix(path: "/tmp/no-such-switchyard.sock"), workload: w, mode: .closedLoop(concurrency: 1))
        cfg.requests = 3
        let res = try ServeBenchRunner(config: cfg).run()
        #expect(res.summary.completed == 0)
        #expect(res.summary.errors == ["no_server": 3])
    }
}
