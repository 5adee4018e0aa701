import Foundation
import Glibc
import Testing
@testable import Front

private let chatBody = #"{"model":"echo","messages":[{"role":"user","content":"hello big world"}]}"#

@Suite(.serialized) struct FrontServerTests {
    @Test func chatNonStreaming() throws {
        let s = try TestServer()
        defer { s.stop() }
        let c = try RawClient(path: s.path)
        try c.send(request("POST", "/v1/chat/completions", body: chatBody))
        let r = try c.read()
        #expect(r.status == 200)
        #expect(r.header("X-Switchyard-Worker") != nil)
        let j = try r.json()
        #expect(j["object"] == .string("chat.completion"))
        guard case .array(let choices)? = j["choices"], let first = choices.first else { Issue.record("no choices"); return }
        #expect(first["message"]?["content"] == .string("hello big world"))
        #expect(first["finish_reason"] == .string("stop"))
        #expect(j["usage"]?["completion_tokens"] == .number(3, integer: 3))
        #expect(j["usage"]?["prompt_tokens_details"]?["cached_tokens"] == .number(0, integer: 0))
        // X-Request-Id (what the OpenAI SDKs expose as request_id): the number of the response's id.
        if case .string(let id)? = j["id"], id.hasPrefix("chatcmpl-") {
            #expect(r.header("x-request-id") == "req-" + id.dropFirst("chatcmpl-".count))
        } else { Issue.record("no chatcmpl- id") }
        // The start-up log names the io_uring paths in use.
        #expect(s.logs.contains { $0.contains("io_uring: setup flags") && $0.contains("IORING_OP_FUTEX_WAIT") })
    }

    @Test func completionsLengthLimit() throws {
        let s = try TestServer()
        defer { s.stop() }
        let c = try RawClient(path: s.path)
        try c.send(request("POST", "/v1/completions", body: #"{"prompt":"a b c d","max_tokens":2}"#))
        let r = try c.read()
        #expect(r.status == 200)
        let j = try r.json()
        #expect(j["object"] == .string("text_completion"))
        guard case .array(let choices)? = j["choices"] else { Issue.record("no choices"); return }
        #expect(choices.first?["text"] == .string("a b"))
        #expect(choices.first?["finish_reason"] == .string("length"))
    }

    @Test func chatStreamingWithUsage() throws {
        let s = try TestServer()
        defer { s.stop() }
        let c = try RawClient(path: s.path)
        let body = #"{"messages":[{"role":"user","content":"one two three four"}],"stream":true,"stream_options":{"include_usage":true}}"#
        try c.send(request("POST", "/v1/chat/completions", body: body))
        let r = try c.read()
        #expect(r.status == 200)
        #expect(r.header("content-type") == "text/event-stream")
        #expect(r.header("X-Switchyard-Worker") != nil)
        #expect(r.header("x-request-id")?.hasPrefix("req-") == true)
        let events = sseEvents(r.bodyText)
        #expect(events.last == "[DONE]")
        var text = ""
        var finish: JSONValue? = nil
        var usage: JSONValue? = nil
        for e in events.dropLast() {
            let j = try JSON.parse(Array(e.utf8))
            #expect(j["object"] == .string("chat.completion.chunk"))
            // include_usage: every chunk carries "usage", null until the last one (OpenAI's shape).
            guard let u = j["usage"] else { Issue.record("no usage key: \(e)"); continue }
            if u != .null { usage = u; continue }
            guard case .array(let ch)? = j["choices"], let c0 = ch.first else { continue }
            if case .string(let t)? = c0["delta"]?["content"] { text += t }
            if let f = c0["finish_reason"], f != .null { finish = f }
        }
        #expect(text == "one two three four")
        #expect(finish == .string("stop"))
        #expect(usage?["completion_tokens"] == .number(4, integer: 4))
        // The connection stays usable afterwards.
        try c.send(request("GET", "/health"))
        #expect(try c.read().status == 200)
    }

    @Test func completionsStreaming() throws {
        let s = try TestServer()
        defer { s.stop() }
        let c = try RawClient(path: s.path)
        try c.send(request("POST", "/v1/completions", body: #"{"prompt":"x y","stream":true}"#))
        let r = try c.read()
        let events = sseEvents(r.bodyText)
        #expect(events.last == "[DONE]")
        let texts = try events.dropLast().map { e -> String in
            let j = try JSON.parse(Array(e.utf8))
            guard case .array(let ch)? = j["choices"], case .string(let t)? = ch.first?["text"] else { return "" }
            return t
        }
        #expect(texts.joined() == "x y")
        #expect(!r.bodyText.contains("usage"))
    }

    /// Log-probabilities through the loop (the in-process echo answers word by word, each word a certain
    /// pick): a non-streamed chat answer lists every word; a streamed completion carries each word's
    /// entry in the chunk with its text, offsets running on, and null where a chunk has none.
    @Test func logprobsReachTheAnswerAndEachStreamChunk() throws {
        let s = try TestServer()
        defer { s.stop() }
        let c = try RawClient(path: s.path)
        try c.send(request("POST", "/v1/chat/completions",
                           body: #"{"messages":[{"role":"user","content":"hello big world"}],"logprobs":true,"top_logprobs":1}"#))
        let r = try c.read()
        #expect(r.status == 200)
        guard case .array(let choices)? = try r.json()["choices"], case .array(let content)? = choices.first?["logprobs"]?["content"] else {
            Issue.record("no logprobs.content: \(r.bodyText)"); return
        }
        #expect(content.map { $0["token"] } == [.string("hello"), .string(" big"), .string(" world")])
        #expect(content.allSatisfy { $0["logprob"] == .number(0, integer: nil) })
        #expect(content.allSatisfy { if case .array(let t)? = $0["top_logprobs"] { t.count == 1 } else { false } })

        try c.send(request("POST", "/v1/completions", body: #"{"prompt":"x yz","stream":true,"logprobs":0}"#))
        let st = try c.read()
        var offsets: [JSONValue] = []
        var tokens: [JSONValue] = []
        var nullChunks = 0
        for e in sseEvents(st.bodyText).dropLast() {
            let j = try JSON.parse(Array(e.utf8))
            guard case .array(let ch)? = j["choices"], let c0 = ch.first, let lp = c0["logprobs"] else { continue }
            if lp == .null { nullChunks += 1; #expect(c0["text"] == .string("")); continue }
            guard case .array(let t)? = lp["tokens"], case .array(let o)? = lp["text_offset"] else { continue }
            #expect(t == [c0["text"]!])
            tokens += t
            offsets += o
        }
        #expect(tokens == [.string("x"), .string(" yz")])
        #expect(offsets == [.number(0, integer: 0), .number(1, integer: 1)])
        #expect(nullChunks == 1, "the finishing chunk has no tokens left: null")
        // Without logprobs: null, as before.
        try c.send(request("POST", "/v1/completions", body: #"{"prompt":"x"}"#))
        guard case .array(let plain)? = try c.read().json()["choices"] else { Issue.record("no choices"); return }
        #expect(plain.first?["logprobs"] == .null)
    }

    @Test func keepAliveAndPipelining() throws {
        let s = try TestServer()
        defer { s.stop() }
        let c = try RawClient(path: s.path)
        for i in 0..<5 {
            try c.send(request("POST", "/v1/completions", body: #"{"prompt":"n\#(i)"}"#))
            let r = try c.read()
            #expect(r.status == 200)
            #expect(r.header("connection") == "keep-alive")
        }
        // Three requests in one write; responses come back in order.
        let burst = request("POST", "/v1/completions", body: #"{"prompt":"first"}"#)
            + request("GET", "/v1/models")
            + request("POST", "/v1/completions", body: #"{"prompt":"third","stream":true}"#)
        try c.send(burst)
        let r1 = try c.read(), r2 = try c.read(), r3 = try c.read()
        #expect(r1.bodyText.contains("\"text\":\"first\""))
        #expect(r2.bodyText.contains("\"object\":\"list\""))
        #expect(r3.bodyText.contains("third") && r3.bodyText.hasSuffix("data: [DONE]\n\n"))
        // Connection: close is honoured.
        try c.send(request("GET", "/health", headers: ["Connection: close"]))
        #expect(try c.read().header("connection") == "close")
        #expect(c.waitClosed())
    }

    /// A pipelined request answered at once (health, models, 404, 405, a bad body) right behind a
    /// generation: its answer is built while the generation's response is being handed to the connection,
    /// in the same reused buffers. Every response must come back whole and in order.
    @Test func immediateAnswersBehindGenerations() throws {
        let s = try TestServer()
        defer { s.stop() }
        let c = try RawClient(path: s.path)
        for stream in [false, true] {
            let gen = stream ? #"{"prompt":"alpha beta","stream":true}"# : #"{"prompt":"alpha beta"}"#
            let burst = request("POST", "/v1/completions", body: gen) + request("GET", "/health")
                + request("POST", "/v1/completions", body: gen) + request("GET", "/nope")
                + request("POST", "/v1/completions", body: gen) + request("GET", "/v1/completions")
                + request("POST", "/v1/completions", body: gen) + request("POST", "/v1/completions", body: "{")
                + request("POST", "/v1/chat/completions", body: #"{"messages":[{"role":"user","content":"chat here"}],"stream":\#(stream)}"#)
                + request("GET", "/v1/models")
            try c.send(burst)
            for k in 0..<4 {
                let g = try c.read()
                #expect(g.status == 200, "generation \(k)")
                #expect(g.bodyText.contains("alpha") && g.bodyText.contains("beta"), "generation \(k): \(g.bodyText)")
                if stream { #expect(g.bodyText.hasSuffix("data: [DONE]\n\n")) }
                let x = try c.read()
                let expected = [200, 404, 405, 400][k]
                #expect(x.status == expected, "immediate answer \(k): \(x.status) \(x.bodyText)")
                #expect(x.status == 200 ? x.bodyText.contains("ok") : x.bodyText.contains("\"error\""))
            }
            let chat = try c.read()
            #expect(chat.status == 200 && chat.bodyText.contains("chat"))
            let models = try c.read()
            #expect(models.status == 200 && models.bodyText.contains("\"object\":\"list\""))
        }
    }

    @Test func chunkedRequestBodyAndExpectContinue() throws {
        let s = try TestServer()
        defer { s.stop() }
        let c = try RawClient(path: s.path)
        let body = #"{"prompt":"chunky body"}"#
        let half = body.utf8.count / 2
        let a = String(body.prefix(half)), b = String(body.dropFirst(half))
        try c.send("POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + String(a.utf8.count, radix: 16) + "\r\n" + a + "\r\n" + String(b.utf8.count, radix: 16) + "\r\n" + b + "\r\n0\r\n\r\n")
        let r = try c.read()
        #expect(r.status == 200)
        #expect(r.bodyText.contains("chunky body"))

        try c.send("POST /v1/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: \(body.utf8.count)\r\n\r\n")
        let cont = try c.read(stopAt100: true)
        #expect(cont.status == 100)
        try c.send(body)
        #expect(try c.read().status == 200)
    }

    /// Sends `raw`, expects `status` with an OpenAI-style error body, and checks the server still serves.
    private func expectError(_ s: TestServer, _ raw: String, status: Int, closes: Bool, file: String = #fileID, line: Int = #line) throws {
        let c = try RawClient(path: s.path)
        try c.send(raw)
        let r = try c.read()
        #expect(r.status == status, "\(raw.prefix(60).debugDescription)")
        let j = try r.json()
        if case .string(let m)? = j["error"]?["message"] { #expect(!m.isEmpty) } else { Issue.record("no error.message") }
        #expect(j["error"]?["type"] != nil)
        #expect(j["error"]?["code"] != nil)
        if closes { #expect(c.waitClosed()) }
        let other = try RawClient(path: s.path)
        try other.send(request("GET", "/health"))
        #expect(try other.read().status == 200)
    }

    @Test func errorResponses() throws {
        let s = try TestServer()
        defer { s.stop() }
        try expectError(s, "GET / HTTP/1.1\r\nX: " + String(repeating: "a", count: 17000) + "\r\n\r\n", status: 431, closes: true)
        try expectError(s, "POST /v1/completions HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n", status: 413, closes: true)
        try expectError(s, "POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", status: 411, closes: true)
        try expectError(s, "BAD\r\n\r\n", status: 400, closes: true)
        try expectError(s, "GET / HTTP/1.1\r\n folded: x\r\n\r\n", status: 400, closes: true)
        try expectError(s, "GET / HTTP/3.0\r\n\r\n", status: 505, closes: true)
        try expectError(s, request("POST", "/v1/completions", body: "{nope"), status: 400, closes: false)
        try expectError(s, request("POST", "/v1/chat/completions", body: #"{"messages":[{"role":"bard","content":"x"}]}"#), status: 400, closes: false)
        try expectError(s, request("POST", "/v1/completions", body: #"{"prompt":"x","n":3}"#), status: 400, closes: false)
        try expectError(s, request("GET", "/nowhere"), status: 404, closes: false)
        try expectError(s, request("GET", "/v1/chat/completions"), status: 405, closes: false)
        try expectError(s, request("POST", "/tokenize", body: #"{"content":3}"#), status: 400, closes: false)
        let c = try RawClient(path: s.path)
        try c.send(request("DELETE", "/health"))
        #expect(try c.read().header("allow") == "GET, HEAD")
        // A method HTTP does not define: 501 on any path, the connection stays usable.
        try c.send(request("BREW", "/health") + request("BREW", "/nowhere") + request("GET", "/health"))
        for _ in 0..<2 {
            let r = try c.read()
            #expect(r.status == 501 && r.bodyText.contains("\"code\":\"not_implemented\"") && r.header("allow") == nil)
        }
        #expect(try c.read().status == 200)
        try expectError(s, "GET /health HTTP/1.1\r\n\r\n", status: 400, closes: true)
        try expectError(s, "GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", status: 400, closes: true)
    }

    @Test func requestTimeouts() throws {
        let s = try TestServer(configure: { $0.requestTimeout = 0.3; $0.idleTimeout = 0.3 })
        defer { s.stop() }
        let slow = try RawClient(path: s.path)
        try slow.send("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        let r = try slow.read()
        #expect(r.status == 408)
        #expect(slow.waitClosed())
        let silent = try RawClient(path: s.path)
        #expect(try silent.read().status == 408)
        // A keep-alive connection idle between requests is closed quietly.
        let idle = try RawClient(path: s.path)
        try idle.send(request("GET", "/health"))
        #expect(try idle.read().status == 200)
        #expect(idle.waitClosed())
    }

    @Test func healthModelsMetricsTokenize() throws {
        let s = try TestServer()
        defer { s.stop() }
        let c = try RawClient(path: s.path)
        try c.send(request("GET", "/health"))
        let h = try c.read()
        #expect(h.status == 200 && h.bodyText == #"{"status":"ok"}"#)
        s.backend.setReady(false)
        try c.send(request("GET", "/health"))
        #expect(try c.read().status == 503)
        try c.send(request("POST", "/v1/completions", body: #"{"prompt":"x"}"#))
        #expect(try c.read().status == 503)
        s.backend.setReady(true)

        try c.send(request("GET", "/v1/models"))
        let m = try c.read().json()
        guard case .array(let data)? = m["data"] else { Issue.record("no data"); return }
        #expect(data.first?["id"] == .string("echo") && data.first?["created"] != .number(0, integer: 0))
        // OpenAI's retrieve: the served model's object (its id percent-decoded), 404 model_not_found otherwise.
        try c.send(request("GET", "/v1/models/echo") + request("GET", "/v1/models/%65cho") + request("GET", "/v1/models/gpt-4")
                   + request("POST", "/v1/models/echo", body: "{}"))
        for _ in 0..<2 {
            let one = try c.read()
            #expect(one.status == 200)
            #expect(try one.json()["id"] == .string("echo") && one.json()["object"] == .string("model"))
        }
        let missing = try c.read()
        #expect(missing.status == 404 && missing.bodyText.contains("\"code\":\"model_not_found\""))
        let post = try c.read()
        #expect(post.status == 405 && post.header("allow") == "GET, HEAD")

        try c.send(request("POST", "/tokenize", body: #"{"content":"hi","add_special":false,"parse_special":true}"#))
        let t = try c.read()
        #expect(t.bodyText == #"{"tokens":[104,105]}"#)
        #expect(t.header("X-Switchyard-Worker") != nil)
        try c.send(request("POST", "/detokenize", body: #"{"tokens":[104,105]}"#))
        #expect(try c.read().bodyText == #"{"content":"hi"}"#)

        try c.send(request("POST", "/v1/completions", body: #"{"prompt":"a b c"}"#))
        #expect(try c.read().status == 200)
        try c.send(request("GET", "/metrics"))
        let text = try c.read().bodyText
        #expect(text.contains(#"switchyard_requests_total{route="completions",status="200"} 1"#))
        #expect(text.contains(#"switchyard_requests_total{route="completions",status="503"} 1"#))
        #expect(text.contains("switchyard_tokens_generated_total 3"))
        #expect(text.contains("switchyard_time_to_first_token_seconds_count 1"))
        #expect(text.contains("switchyard_inter_token_seconds_count 2"))
        #expect(text.contains("switchyard_requests_in_flight 0"))   // set from the owner table at rendering
        #expect(text.contains(#"switchyard_worker_in_flight{worker="0"}"#))
        #expect(text.contains(#"switchyard_worker_restarts_total{worker="1"} 0"#))
        #expect(text.contains("switchyard_ring_occupancy"))
    }

    @Test func overloadedGets503RetryAfter() throws {
        var opts = EchoBackend.Options()
        opts.maxInFlight = 0
        let s = try TestServer(echo: opts)
        defer { s.stop() }
        let c = try RawClient(path: s.path)
        try c.send(request("POST", "/v1/chat/completions", body: chatBody))
        let r = try c.read()
        #expect(r.status == 503)
        #expect(r.header("retry-after") == "1")
        #expect(try r.json()["error"]?["code"] == .string("overloaded"))
    }

    @Test func workerErrorMidStreamAndBeforeStart() throws {
        var opts = EchoBackend.Options()
        opts.failAfterDeltas = 2
        let s = try TestServer(echo: opts)
        defer { s.stop() }
        let c = try RawClient(path: s.path)
        try c.send(request("POST", "/v1/completions", body: #"{"prompt":"a b c d e","stream":true}"#))
        let r = try c.read()
        #expect(r.status == 200)
        let events = sseEvents(r.bodyText)
        #expect(events.last == "[DONE]")
        #expect(events.contains { $0.contains("\"error\"") && $0.contains("echo worker failed") })
        try c.send(request("POST", "/v1/completions", body: #"{"prompt":"a b c d e"}"#))
        let r2 = try c.read()
        #expect(r2.status == 503)
    }

    @Test func clientDisconnectCancels() throws {
        var opts = EchoBackend.Options()
        opts.delayPerWord = 0.02
        let s = try TestServer(echo: opts)
        defer { s.stop() }
        do {
            let c = try RawClient(path: s.path)
            let words = (0..<500).map { "w\($0)" }.joined(separator: " ")
            try c.send(request("POST", "/v1/completions", body: #"{"prompt":"\#(words)","stream":true}"#))
            var got = [UInt8](repeating: 0, count: 256)
            let n = recv(c.fd, &got, got.count, 0)   // the stream has started
            #expect(n > 0)
        }   // the client closes here
        #expect(s.backend.awaitCancellations().count == 1)
    }

    @Test func staleSocketReplacedLiveSocketRefused() throws {
        let dir = TestServer.tempDir()
        let path = dir + "/front.sock"
        // A socket file whose server is gone: bound, never listening, closed.
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = try Sockets.makeUnixAddress(path)
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        close(fd)
        #expect(access(path, F_OK) == 0)
        let s = try TestServer(dir: dir)
        let c = try RawClient(path: path)
        try c.send(request("GET", "/health"))
        #expect(try c.read().status == 200)
        var st = stat()
        #expect(stat(path, &st) == 0 && (st.st_mode & 0o777) == 0o660)

        var cfg = FrontConfig()
        cfg.socketPath = path
        cfg.useSystemdSockets = false
        let other = EchoBackend()
        #expect(throws: FrontError.liveServer(path)) { _ = try FrontServer(config: cfg, backend: other) }
        other.stop()
        s.stop()
        #expect(access(path, F_OK) != 0)   // removed at shutdown

        let dir2 = TestServer.tempDir()
        let file = dir2 + "/plain"
        #expect(FileManager.default.createFile(atPath: file, contents: Data("x".utf8)))
        cfg.socketPath = file
        let third = EchoBackend()
        #expect(throws: FrontError.notASocket(file)) { _ = try FrontServer(config: cfg, backend: third) }
        third.stop()
        unlink(file)
        rmdir(dir2)
    }

    @Test func gracefulShutdownFinishesInFlight() throws {
        var opts = EchoBackend.Options()
        opts.delayPerWord = 0.02
        let s = try TestServer(echo: opts)
        let c = try RawClient(path: s.path)
        try c.send(request("POST", "/v1/completions", body: #"{"prompt":"a b c d e f g h i j","stream":true}"#))
        var first = [UInt8](repeating: 0, count: 16)
        #expect(recv(c.fd, &first, first.count, Int32(MSG_PEEK)) > 0)
        s.server.requestShutdown()
        usleep(50_000)
        #expect(access(s.path, F_OK) != 0)            // stopped accepting: socket file gone
        #expect(throws: TestError.self) { _ = try RawClient(path: s.path) }
        let r = try c.read()
        #expect(r.bodyText.hasSuffix("data: [DONE]\n\n"))
        #expect(c.waitClosed())                        // closed once its response is complete
        let t0 = Date()
        #expect(s.waitStopped(timeout: 5))
        #expect(Date().timeIntervalSince(t0) < 3)
        s.stop()
    }

    @Test func thousandConnectionsLeakNoDescriptors() throws {
        let s = try TestServer()
        defer { s.stop() }
        // Warm up (lazy runtime descriptors), then take the baseline.
        do { let c = try RawClient(path: s.path); try c.send(request("GET", "/health")); _ = try c.read() }
        usleep(50_000)
        let before = openFDCount()
        for round in 0..<10 {
            var clients: [RawClient] = []
            for _ in 0..<100 { clients.append(try RawClient(path: s.path)) }
            for (i, c) in clients.enumerated() {
                if i % 3 == 0 { try c.send(request("POST", "/v1/completions", body: #"{"prompt":"r\#(round)"}"#)) }
                else if i % 3 == 1 { try c.send(request("GET", "/health")) }
            }
            for (i, c) in clients.enumerated() where i % 3 != 2 { #expect(try c.read().status == 200) }
        }
        var after = openFDCount()
        for _ in 0..<200 where after != before { usleep(10_000); after = openFDCount() }
        #expect(after == before, "descriptors before \(before), after \(after)")
    }

    @Test func tcpListenerAndPeerIdentity() throws {
        let s = try TestServer(configure: { $0.tcp = "127.0.0.1:0" })
        defer { s.stop() }
        let port = try #require(s.server.listeners.first { $0.family == .tcp }?.port)
        let c = try RawClient(tcpPort: port)
        try c.send(request("POST", "/v1/completions", body: #"{"prompt":"over tcp"}"#))
        let r = try c.read()
        #expect(r.status == 200 && r.bodyText.contains("over tcp"))
    }

    /// A tiny provided-buffer ring (2 × 64 B) forces -ENOBUFS and multishot re-arms; a 100 KB body must still
    /// arrive intact.
    @Test func smallBufferRingReArms() throws {
        let s = try TestServer(configure: { $0.recvBufferCount = 2; $0.recvBufferSize = 64 })
        defer { s.stop() }
        let c = try RawClient(path: s.path)
        let words = (0..<20000).map { "w\($0 % 10)" }.joined(separator: " ")
        try c.send(request("POST", "/v1/completions", body: #"{"prompt":"\#(words)"}"#))
        let r = try c.read()
        #expect(r.status == 200)
        let j = try r.json()
        guard case .array(let ch)? = j["choices"] else { Issue.record("no choices"); return }
        #expect(ch.first?["text"] == .string(words))
    }

    @Test func http10StreamAndHead() throws {
        let s = try TestServer()
        defer { s.stop() }
        let c = try RawClient(path: s.path)
        let body = #"{"prompt":"old client","stream":true}"#
        try c.send("POST /v1/completions HTTP/1.0\r\nContent-Length: \(body.utf8.count)\r\n\r\n" + body)
        let r = try c.read()   // close-delimited
        #expect(r.header("transfer-encoding") == nil)
        #expect(r.bodyText.hasSuffix("data: [DONE]\n\n"))
        let h = try RawClient(path: s.path)
        try h.send(request("HEAD", "/health"))
        #expect(try h.read(head: true).status == 200)
    }

    /// The answer to a HEAD carries no body, whatever its status: a keep-alive client (httpx, aiohttp,
    /// http.client) reads the next response right after the head, so a body would be taken for its status
    /// line. GET routes answer HEAD like GET; the others answer 405 with Allow.
    @Test func headAnswersHaveNoBody() throws {
        let s = try TestServer()
        defer { s.stop() }
        let c = try RawClient(path: s.path)
        var pipelined = ""
        for p in ["/health", "/v1/models", "/nowhere", "/v1/completions"] { pipelined += request("HEAD", p) }
        pipelined += request("GET", "/health")
        try c.send(pipelined)
        let health = try c.read(head: true)
        #expect(health.status == 200 && health.header("content-length") == "15" && health.header("connection") == "keep-alive")
        #expect(try c.read(head: true).status == 200)
        let missing = try c.read(head: true)
        #expect(missing.status == 404 && Int(missing.header("content-length") ?? "") ?? 0 > 0)
        let post = try c.read(head: true)
        #expect(post.status == 405 && post.header("allow") == "POST")
        let after = try c.read()   // intact: nothing of the bodies above came before it
        #expect(after.status == 200 && after.bodyText == #"{"status":"ok"}"#)
        #expect(c.pending == 0)
        try c.send(request("DELETE", "/v1/models"))
        #expect(try c.read().header("allow") == "GET, HEAD")
    }

    /// A Unix-socket client that half-closes (shutdown(SHUT_WR)) right after its requests still gets every
    /// answer, then the close (both ways of reading Unix sockets: tools/test runs the suite with each). Over
    /// TCP a half-close looks like a client that went away, so EOF there cancels the request and closes, as
    /// nginx treats a client abort.
    @Test func halfClosedClientGetsItsAnswers() throws {
        var opts = EchoBackend.Options()
        opts.delayPerWord = 0.01   // the EOF arrives while the generation runs
        let s = try TestServer(configure: { $0.tcp = "127.0.0.1:0" }, echo: opts)
        defer { s.stop() }
        let c = try RawClient(path: s.path)
        try c.send(request("POST", "/v1/completions", body: #"{"prompt":"one two three"}"#)
                   + request("POST", "/v1/completions", body: #"{"prompt":"four five","stream":true}"#)
                   + request("GET", "/health"))
        shutdown(c.fd, Int32(SHUT_WR))
        let a = try c.read()
        #expect(a.status == 200 && a.bodyText.contains("one two three"))
        let b = try c.read()
        #expect(b.status == 200 && b.bodyText.hasSuffix("data: [DONE]\n\n"))
        #expect(try c.read().status == 200)
        #expect(c.waitClosed())
        #expect(s.backend.cancelledRequests.isEmpty)
        // A partial request followed by the half-close: closed without an answer (it can never complete).
        let p = try RawClient(path: s.path)
        try p.send("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{")
        shutdown(p.fd, Int32(SHUT_WR))
        #expect(p.waitClosed())

        // TCP: the EOF cancels the generation in flight and the connection closes.
        let port = try #require(s.server.listeners.first { $0.family == .tcp }?.port)
        let t = try RawClient(tcpPort: port)
        try t.send(request("POST", "/v1/completions", body: #"{"prompt":"six seven eight nine ten eleven"}"#))
        for _ in 0..<300 where s.backend.submittedCount < 3 { usleep(10_000) }
        #expect(s.backend.submittedCount == 3, "the TCP request never reached the backend")
        shutdown(t.fd, Int32(SHUT_WR))
        #expect(t.waitClosed())
        #expect(s.backend.awaitCancellations(1).count == 1, "the TCP request was not cancelled on EOF")
    }

    /// With open but quiet connections the loop sleeps in io_uring_enter: its thread uses (almost) no CPU,
    /// lingering for the next request after each answer (50 µs, `serve`'s default) included.
    @Test func idleUsesNoCPU() throws {
        let s = try TestServer(configure: { $0.lingerNanoseconds = 50_000 })
        defer { s.stop() }
        let clients = try (0..<8).map { _ in try RawClient(path: s.path) }
        try clients[0].send(request("GET", "/health"))
        _ = try clients[0].read()
        let loop = try #require(s.loopThread)
        let t0 = threadCPUSeconds(loop)
        usleep(500_000)
        let used = threadCPUSeconds(loop) - t0
        #expect(t0 >= 0 && used < 0.01, "loop thread CPU while idle: \(used) s in 0.5 s")
    }

    /// Lingering for the next request (--linger-us) answers keep-alive and pipelined requests like sleeping
    /// does: every request of 200 back-to-back ones and of a pipelined pair is answered, in order.
    @Test func lingerServesKeepAliveRequests() throws {
        let s = try TestServer(configure: { $0.lingerNanoseconds = 50_000 })
        defer { s.stop() }
        let c = try RawClient(path: s.path)
        for _ in 0..<200 {
            try c.send(request("GET", "/health"))
            #expect(try c.read().status == 200)
        }
        try c.send(request("GET", "/health") + request("GET", "/nope"))
        #expect(try c.read().status == 200)
        #expect(try c.read().status == 404)
    }

    /// SIGTERM reaches the loop through its signalfd (polled in io_uring): the server drains and exits. The
    /// signal is sent to the loop thread only (it blocks SIGTERM), so the test process is never at risk.
    @Test func sigtermShutsDownGracefully() throws {
        let s = try TestServer(configure: { $0.handleSignals = true })
        defer { s.stop() }
        let c = try RawClient(path: s.path)
        try c.send(request("GET", "/health"))
        #expect(try c.read().status == 200)
        let t = try #require(s.loopThread)
        #expect(pthread_kill(t, SIGTERM) == 0)
        #expect(c.waitClosed())
        #expect(s.waitStopped(timeout: 5))
        #expect(access(s.path, F_OK) != 0)
    }

    /// 64 concurrent streams, every other client hanging up midway: the rest complete, every abandoned
    /// request is cancelled, and no descriptor leaks.
    @Test func concurrentStreamsWithDisconnects() throws {
        var opts = EchoBackend.Options()
        opts.delayPerWord = 0.002
        let s = try TestServer(echo: opts)
        defer { s.stop() }
        do { let c = try RawClient(path: s.path); try c.send(request("GET", "/health")); _ = try c.read() }
        usleep(50_000)
        let before = openFDCount()
        let words = (0..<100).map { "t\($0)" }.joined(separator: " ")
        var clients = try (0..<64).map { _ in try RawClient(path: s.path) }
        for c in clients { try c.send(request("POST", "/v1/completions", body: #"{"prompt":"\#(words)","stream":true}"#)) }
        var peek = [UInt8](repeating: 0, count: 8)
        for (i, c) in clients.enumerated() where i % 2 == 1 { #expect(recv(c.fd, &peek, 8, Int32(MSG_PEEK)) > 0) }
        clients = clients.enumerated().filter { $0.offset % 2 == 0 }.map(\.element)   // the odd ones close
        for c in clients {
            let r = try c.read()
            let text = try sseEvents(r.bodyText).dropLast().map { e -> String in
                let j = try JSON.parse(Array(e.utf8))
                guard case .array(let ch)? = j["choices"], case .string(let t)? = ch.first?["text"] else { return "" }
                return t
            }.joined()
            #expect(text == words)
        }
        clients = []
        #expect(s.backend.awaitCancellations(32).count == 32)
        // The count is the whole test process's: tests running beside this one open and close descriptors
        // too, so one that closed its own during the run may leave fewer; a leak here leaves more.
        var after = openFDCount()
        for _ in 0..<300 where after > before { usleep(10_000); after = openFDCount() }
        #expect(after <= before)
    }

    /// Random bytes on many connections: every one gets a 4xx or a close, and the server keeps serving.
    @Test func garbageInputKeepsServing() throws {
        let s = try TestServer(configure: { $0.requestTimeout = 0.2; $0.idleTimeout = 0.2 })
        defer { s.stop() }
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<50 {
            let c = try RawClient(path: s.path)
            let n = Int.random(in: 1...3000, using: &rng)
            var bytes = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
            if Bool.random(using: &rng) { bytes = Array("POST /v1/completions HTTP/1.1\r\n".utf8) + bytes }
            try? c.send(bytes)
            if let r = try? c.read() { #expect((400..<600).contains(r.status)) }
        }
        let ok = try RawClient(path: s.path)
        try ok.send(request("GET", "/health"))
        #expect(try ok.read().status == 200)
    }

    /// A client that never reads a long stream: once the socket buffers fill, the send stalls and the client is
    /// dropped after idleTimeout, cancelling its request; others are unaffected.
    @Test func stalledReaderIsDropped() throws {
        var opts = EchoBackend.Options()
        opts.delayPerWord = 0.0005   // 20000 words: ~10 s of generation, far longer than the stall limit
        let s = try TestServer(configure: { $0.idleTimeout = 0.3; $0.requestTimeout = 0.3 }, echo: opts)
        defer { s.stop() }
        let c = try unreadStream(s.path)
        withExtendedLifetime(c) {   // open, unread, until the front has given up on it
            #expect(s.backend.awaitCancellations(timeout: 5).count == 1)
        }
        #expect(s.logs.contains { $0.contains("accepted nothing") }, "\(s.logs)")
        let other = try RawClient(path: s.path)
        try other.send(request("GET", "/health"))
        #expect(try other.read().status == 200)
    }

    /// The per-connection output limit drops a client for output it leaves unread, not for one answer larger
    /// than the limit: a non-streamed answer (with log-probabilities, several times its text) bigger than
    /// the limit arrives whole; a stream nobody reads is dropped once the limit's worth waits behind it.
    @Test func oneLargeAnswerIsSentWholeButUnreadOutputIsBounded() throws {
        let s = try TestServer(configure: { $0.maxQueuedOutput = 64 << 10; $0.idleTimeout = 30; $0.requestTimeout = 30 })
        defer { s.stop() }
        let words = (0..<3000).map { _ in "word" }.joined(separator: " ")
        let c = try RawClient(path: s.path)
        try c.send(request("POST", "/v1/chat/completions",
                           body: #"{"messages":[{"role":"user","content":"\#(words)"}],"logprobs":true,"top_logprobs":1}"#))
        let r = try c.read()
        #expect(r.status == 200)
        #expect(r.bodyText.utf8.count > 64 << 10, "the answer is \(r.bodyText.utf8.count) bytes")
        guard case .array(let choices)? = try r.json()["choices"], case .array(let content)? = choices.first?["logprobs"]?["content"] else {
            Issue.record("no logprobs.content"); return
        }
        #expect(content.count == 3000)

        var opts = EchoBackend.Options()
        opts.delayPerWord = 0.0002
        let slow = try TestServer(configure: { $0.maxQueuedOutput = 64 << 10; $0.idleTimeout = 30; $0.requestTimeout = 30 }, echo: opts)
        defer { slow.stop() }
        let stalled = try unreadStream(slow.path)
        withExtendedLifetime(stalled) {
            #expect(slow.backend.awaitCancellations(timeout: 10).count == 1)
        }
        #expect(slow.logs.contains { $0.contains("does not read its responses") }, "\(slow.logs)")
    }

    /// Many clients that stop reading cannot pile up output without bound: past the total limit the one holding
    /// the most is dropped (its request cancelled), each under its own per-connection limit.
    @Test func totalUnreadOutputIsBounded() throws {
        var opts = EchoBackend.Options()
        opts.delayPerWord = 0.0002   // 20000 words: ~4 s of generation each
        let s = try TestServer(configure: { $0.maxQueuedOutput = 8 << 20; $0.maxTotalQueuedOutput = 256 << 10 }, echo: opts)
        defer { s.stop() }
        var clients: [RawClient] = []
        for _ in 0..<3 { clients.append(try unreadStream(s.path)) }
        // Three streams of ~900 KB of SSE each against 256 KiB for all: some are dropped long before they end.
        #expect(s.backend.awaitCancellations(timeout: 10).count >= 1)
        #expect(s.logs.contains { $0.contains("most unread output") }, "\(s.logs)")
        let other = try RawClient(path: s.path)
        try other.send(request("GET", "/health"))
        #expect(try other.read().status == 200)
        clients = []
    }
}

/// A client that asks for a 20 000-word stream with a 4 KiB receive buffer and then reads nothing (the
/// socket fills at once and the front's output for it waits).
private func unreadStream(_ path: String) throws -> RawClient {
    let c = try RawClient(path: path)
    var size: Int32 = 4096
    setsockopt(c.fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    let words = (0..<20000).map { _ in "word" }.joined(separator: " ")
    try c.send(request("POST", "/v1/completions", body: #"{"prompt":"\#(words)","stream":true}"#))
    return c
}
