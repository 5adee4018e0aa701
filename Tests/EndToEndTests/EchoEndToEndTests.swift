// End-to-end tests of `switchyard serve --engine echo` (issue 5): the real binary, its io_uring front and
// two worker processes behind shared-memory rings, driven over the Unix socket. The echo engine answers
// with the prompt (a completion's text, a chat's last user message), one byte-token per step.
import ClientKit
import Foundation
import Glibc
import Testing

/// Two echo workers, no pinning (the tests share two cores with everything else).
let echoArgs = ["--engine", "echo", "--workers", "2", "--numa", "off"]

@Suite(.serialized) struct EchoEndToEndTests {
    // MARK: Requests, streaming and not

    @Test func completionsAndChatNonStreaming() throws {
        try withServer(echoArgs) { s in
            let prompt = "Hello, wörld! ✓ 🚂"
            let r = try s.request("POST", "/v1/completions", json: ["prompt": prompt, "max_tokens": 100])
            #expect(r.head.status == 200, "\(r.text)")
            #expect((r.head.header("content-type") ?? "").contains("application/json"))
            #expect(["0", "1"].contains(r.head.header("x-switchyard-worker") ?? ""), "X-Switchyard-Worker: \(r.head.headers)")
            let o = try #require(jsonObject(r.body), "not JSON: \(r.text)")
            #expect(o["object"] as? String == "text_completion")
            let choice = try #require((o["choices"] as? [[String: Any]])?.first)
            #expect(choice["text"] as? String == prompt)
            #expect(choice["finish_reason"] as? String == "stop")
            let usage = try #require(o["usage"] as? [String: Any])
            #expect(usage["prompt_tokens"] as? Int == prompt.utf8.count)
            #expect(usage["completion_tokens"] as? Int == prompt.utf8.count)
            #expect((usage["prompt_tokens_details"] as? [String: Any])?["cached_tokens"] as? Int == 0)

            // max_tokens cuts the answer: finish_reason "length".
            let cut = try s.request("POST", "/v1/completions", json: ["prompt": "abcdefghij", "max_tokens": 4])
            let cutChoice = (jsonObject(cut.body)?["choices"] as? [[String: Any]])?.first
            #expect(cutChoice?["text"] as? String == "abcd", "\(cut.text)")
            #expect(cutChoice?["finish_reason"] as? String == "length")

            // Chat: the answer is the last user message.
            let chat = try s.request("POST", "/v1/chat/completions", json: [
                "messages": [["role": "system", "content": "be brief"], ["role": "user", "content": "first"],
                             ["role": "assistant", "content": "ok"], ["role": "user", "content": "say ünïcode"]],
                "max_tokens": 64])
            #expect(chat.head.status == 200, "\(chat.text)")
            let co = try #require(jsonObject(chat.body), "\(chat.text)")
            #expect(co["object"] as? String == "chat.completion")
            let msg = ((co["choices"] as? [[String: Any]])?.first?["message"]) as? [String: Any]
            #expect(msg?["role"] as? String == "assistant")
            #expect(msg?["content"] as? String == "say ünïcode", "\(chat.text)")

            let models = try s.request("GET", "/v1/models")
            #expect(models.head.status == 200)

            // --ring-wake auto (the default) takes the futex path exactly where the kernel has it (the start-up
            // probe arms a real IORING_OP_FUTEX_WAIT), and the log says which path runs.
            let path = kernelHasFutexWait() ? "response rings wake the loop via IORING_OP_FUTEX_WAIT" : "backend wake-ups via eventfd poll"
            #expect(s.log.contains(path), "expected '\(path)' in the log:\n\(s.logTail())")
            // With the default spins (front polling and lingering, workers spinning 50 µs), an idle server
            // still sleeps once they end.
            try expectIdleUsesNoCPU(s)
            let ids = (jsonObject(models.body)?["data"] as? [[String: Any]])?.compactMap { $0["id"] as? String } ?? []
            #expect(ids.contains("echo"), "\(models.text)")
        }
    }

    /// With every spin off (the worker sleeps at once when idle, the front neither polls the rings nor
    /// lingers), each hand-off goes through a sleep and a wake-up: sequential and concurrent requests are
    /// still all answered, whole, with each way a worker can wake the front (`--ring-wake futex`:
    /// IORING_OP_FUTEX_WAIT on each response ring, Linux 6.7+; `eventfd`: the fallback), also after a
    /// worker was killed and replaced (a futex wait armed on the dead worker's ring is cancelled and one is
    /// armed on the new ring). Were the wake-ups lost, every answer would wait for the front's 100 ms
    /// supervision tick: 50 requests would take 5 s, so the 3 s bound (~60x what they take) tells the two apart.
    /// --spin-yield-every: yielding on every poll still answers (the spin only gives its CPU away more
    /// often), and a value that is not a power of two is refused at start with a message naming it.
    @Test func spinYieldIntervalIsASettingAndChecked() throws {
        try withServer(echoArgs + ["--spin-yield-every", "1"]) { s in
            for i in 0..<20 {
                let r = try s.request("POST", "/v1/completions", json: ["prompt": "yield \(i)", "max_tokens": 16])
                #expect(((jsonObject(r.body)?["choices"] as? [[String: Any]])?.first?["text"]) as? String == "yield \(i)")
            }
        }
        let bad = try Server.launch(echoArgs + ["--spin-yield-every", "3"])
        defer { bad.stop() }
        #expect(bad.waitExit(timeout: 30), "serve started with --spin-yield-every 3")
        #expect(bad.exitCode.map { $0 != 0 } ?? false, "\(bad.describeStatus())")
        #expect(bad.log.contains("--spin-yield-every"), "the refusal does not name the option: \(bad.logTail())")
    }

    @Test(arguments: ["futex", "eventfd"])
    func everyWaitSleepingStillAnswers(wake: String) throws {
        if wake == "futex" && !kernelHasFutexWait() { return }   // Linux < 6.7: serve refuses --ring-wake futex
        try withServer(echoArgs + ["--worker-idle-spin-us", "0", "--poll-spin-us", "0", "--linger-us", "0",
                                   "--ring-wake", wake]) { s in
            let path = wake == "futex" ? "via IORING_OP_FUTEX_WAIT" : "via eventfd poll"
            #expect(s.log.contains(path), "the log does not name the wake-up path (\(path)):\n\(s.logTail())")
            func fifty(_ tag: String) throws {
                let start = Date()
                for i in 0..<50 {
                    let prompt = "sleepy \(tag) \(i)"
                    let r = try s.request("POST", "/v1/completions", json: ["prompt": prompt, "max_tokens": 64])
                    #expect(r.head.status == 200, "\(r.text)")
                    let text = ((jsonObject(r.body)?["choices"] as? [[String: Any]])?.first?["text"]) as? String
                    #expect(text == prompt)
                }
                let took = Date().timeIntervalSince(start)
                #expect(took < 3, "50 sleeping round trips took \(took) s: answers wait for the supervision tick")
            }
            try fifty("first")
            let before = try s.waitWorkers(2)
            let victim = try #require(before[0])
            kill(victim, SIGKILL)
            #expect(waitUntil(30) { s.workers()[0].map { $0 != victim } ?? false }, "worker 0 was not replaced:\n\(s.logTail())")
            #expect(waitUntil(30) { (try? s.request("GET", "/health").head.status) == 200 }, "not healthy again:\n\(s.logTail())")
            try fifty("after a respawn")
            // Idle, the server sleeps: no wait that completes at once and is re-armed in a loop (a futex
            // value that never matches would do that: 0.99 CPU seconds here), no spinning worker.
            try expectIdleUsesNoCPU(s)
        }
    }

    @Test func streamingCompletionsAndChat() throws {
        try withServer(echoArgs) { s in
            let conn = HTTPConnection(endpoint: s.endpoint, timeout: 30)
            let prompt = "Streaming ✓ through the rings, byte by byte: ünïcödé 🚂🚃🚃."
            let r = try streamRequest(conn, path: "/v1/completions",
                                      json: ["prompt": prompt, "max_tokens": 500, "stream": true,
                                             "stream_options": ["include_usage": true]])
            #expect(r.head.status == 200)
            #expect((r.head.header("content-type") ?? "").contains("text/event-stream"))
            #expect(r.head.header("x-switchyard-worker") != nil)
            #expect(r.endsWithDone, "last event: \(r.events.last ?? "none")")
            #expect(r.events.filter { $0 == "[DONE]" }.count == 1)
            #expect(r.objects.count == r.events.count - 1, "every event but [DONE] is a JSON object")
            #expect(r.objects.count > 5, "the answer comes in several chunks (\(r.objects.count))")
            #expect(r.text == prompt)
            #expect(r.finishReason == "stop")
            #expect(r.usage?["completion_tokens"] as? Int == prompt.utf8.count, "\(r.usage ?? [:])")
            #expect(r.errors.isEmpty)

            // Chat on the same (kept-alive) connection: a role chunk first, then content deltas.
            let chat = try streamRequest(conn, path: "/v1/chat/completions",
                                         json: ["messages": [["role": "user", "content": prompt]], "stream": true,
                                                "max_tokens": 500])
            #expect(chat.head.status == 200)
            #expect(chat.endsWithDone)
            #expect(chat.text == prompt)
            #expect(chat.finishReason == "stop")
            let firstDelta = (chat.objects.first?["choices"] as? [[String: Any]])?.first?["delta"] as? [String: Any]
            #expect(firstDelta?["role"] as? String == "assistant", "\(chat.events.first ?? "")")
            #expect(chat.objects.allSatisfy { $0["object"] as? String == "chat.completion.chunk" })
        }
    }

    /// Logprobs through the rings: the worker's echo engine has uniform logits over 257 byte tokens, so
    /// each token's log-probability is -ln 257 and there is one entry per UTF-8 byte of the answer; a
    /// streamed chat spreads them over its chunks, each chunk's bytes equal to its text's.
    @Test func logprobsCoverEveryTokenStreamedOrNot() throws {
        try withServer(echoArgs) { s in
            let prompt = "añb"
            let r = try s.request("POST", "/v1/completions", json: ["prompt": prompt, "logprobs": 2, "max_tokens": 50])
            #expect(r.head.status == 200, "\(r.text)")
            let lp = ((jsonObject(r.body)?["choices"] as? [[String: Any]])?.first?["logprobs"]) as? [String: Any]
            let values = lp?["token_logprobs"] as? [Double] ?? []
            #expect(values.count == prompt.utf8.count, "\(r.text)")
            #expect(values.allSatisfy { abs($0 + log(257.0)) < 1e-4 })
            #expect((lp?["text_offset"] as? [Int]) == [0, 1, 2, 2], "ñ is one character of two tokens")
            #expect((lp?["top_logprobs"] as? [[String: Double]])?.allSatisfy { $0.count == 3 } == true)

            let conn = HTTPConnection(endpoint: s.endpoint, timeout: 30)
            let chat = try streamRequest(conn, path: "/v1/chat/completions",
                                         json: ["messages": [["role": "user", "content": prompt]], "stream": true,
                                                "logprobs": true, "top_logprobs": 3])
            #expect(chat.text == prompt && chat.endsWithDone)
            var count = 0
            for o in chat.objects {
                guard let c0 = (o["choices"] as? [[String: Any]])?.first,
                      let content = (c0["logprobs"] as? [String: Any])?["content"] as? [[String: Any]] else { continue }
                let bytes = content.flatMap { $0["bytes"] as? [Int] ?? [] }.map(UInt8.init)
                #expect(String(decoding: bytes, as: UTF8.self) == (c0["delta"] as? [String: Any])?["content"] as? String)
                #expect(content.allSatisfy { ($0["top_logprobs"] as? [Any])?.count == 3 })
                count += content.count
            }
            #expect(count == prompt.utf8.count)
        }
    }

    // MARK: Keep-alive and pipelining

    @Test func keepAliveAndPipelining() throws {
        try withServer(echoArgs) { s in
            // Keep-alive: many requests, one socket.
            let raw = try RawConnection(path: s.socketPath)
            for i in 0..<20 {
                let body = "{\"prompt\":\"keep \(i)\",\"max_tokens\":32}"
                #expect(raw.write("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"))
                let r = try #require(try raw.readResponse(), "server closed the kept-alive connection at request \(i)")
                #expect(r.status == 200)
                let text = ((jsonObject(r.body)?["choices"] as? [[String: Any]])?.first?["text"]) as? String
                #expect(text == "keep \(i)")
            }

            // Expect: 100-continue: the interim response comes before the body is sent.
            do {
                let c = try RawConnection(path: s.socketPath)
                let body = "{\"prompt\":\"continued\",\"max_tokens\":32}"
                #expect(c.write("POST /v1/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: \(body.utf8.count)\r\n\r\n"))
                let interim = try #require(try c.readResponse(), "no 100 Continue")
                #expect(interim.status == 100)
                #expect(c.write(body))
                let r = try #require(try c.readResponse())
                #expect(r.status == 200)
                #expect(((jsonObject(r.body)?["choices"] as? [[String: Any]])?.first?["text"]) as? String == "continued")
            }

            // Pipelining: six requests in one write, answered in order.
            let p = try RawConnection(path: s.socketPath)
            var batch = ""
            var expected: [(Int, String?)] = []
            for i in 0..<6 {
                switch i % 3 {
                case 0:
                    batch += "GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
                    expected.append((200, nil))
                case 1:
                    let body = "{\"prompt\":\"pipe \(i)\",\"max_tokens\":32}"
                    batch += "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"
                    expected.append((200, "pipe \(i)"))
                default:
                    let body = "{\"prompt\":\"streamed \(i)\",\"max_tokens\":32,\"stream\":true}"
                    batch += "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"
                    expected.append((200, "streamed \(i)"))
                }
            }
            #expect(p.write(batch))
            for (i, (status, text)) in expected.enumerated() {
                let r = try #require(try p.readResponse(), "pipelined response \(i) missing")
                #expect(r.status == status, "pipelined response \(i): \(r.status) \(r.text)")
                guard let text else { continue }
                if r.headers["content-type"]?.contains("event-stream") == true {
                    var got = ""
                    for line in r.text.split(separator: "\n") where line.hasPrefix("data: {") {
                        let o = jsonObject(String(line.dropFirst(6)))
                        got += ((o?["choices"] as? [[String: Any]])?.first?["text"] as? String) ?? ""
                    }
                    #expect(got == text, "pipelined stream \(i)")
                    #expect(r.text.hasSuffix("data: [DONE]\n\n"))
                } else {
                    #expect(((jsonObject(r.body)?["choices"] as? [[String: Any]])?.first?["text"]) as? String == text,
                            "pipelined response \(i): \(r.text)")
                }
            }
        }
    }

    // MARK: Error cases

    @Test func errorCasesGetOpenAIErrorsAndTheServerKeepsServing() throws {
        try withServer(echoArgs) { s in
            // A stream in flight on another connection must not be disturbed by the bad requests.
            let bystander = try RawConnection(path: s.socketPath, timeout: 30)
            let long = String(repeating: "0123456789", count: 500)   // ~0.5 s of echo streaming
            let body = "{\"prompt\":\"\(long)\",\"max_tokens\":100000,\"stream\":true}"
            #expect(bystander.write("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"))

            expectOpenAIError(try s.request("POST", "/v1/chat/completions", body: Array("{\"messages\": [".utf8)),
                              status: 400, "truncated JSON")
            expectOpenAIError(try s.request("POST", "/v1/completions", body: Array("not json at all".utf8)),
                              status: 400, "not JSON")
            expectOpenAIError(try s.request("POST", "/v1/chat/completions", json: ["model": "x"]),
                              status: 400, "no messages")
            expectOpenAIError(try s.request("POST", "/v1/completions", json: ["prompt": "x", "max_tokens": -3]),
                              status: 400, "negative max_tokens")
            // A prompt longer than the worker's context (the echo engine's is 65 536 byte-tokens): 400 with
            // OpenAI's code context_length_exceeded, decided by the worker before admission.
            do {
                let r = try s.request("POST", "/v1/completions", json: ["prompt": String(repeating: "y", count: 70_000), "max_tokens": 4])
                expectOpenAIError(r, status: 400, "prompt over the context")
                let err = jsonObject(r.body)?["error"] as? [String: Any]
                #expect(err?["code"] as? String == "context_length_exceeded", "\(r.text)")
                #expect((err?["message"] as? String)?.contains("70000") == true, "\(r.text)")
            }
            expectOpenAIError(try s.request("GET", "/v1/nothing-here"), status: 404, "unknown route")
            expectOpenAIError(try s.request("GET", "/v1/chat/completions"), status: 405, "GET on a POST route")
            expectOpenAIError(try s.request("POST", "/health", json: [:]), status: 405, "POST on a GET route")

            // Oversized body (default limit 1 MiB): refused from its Content-Length.
            do {
                let raw = try RawConnection(path: s.socketPath)
                raw.write("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: \(2 << 20)\r\n\r\n")
                raw.write([UInt8](repeating: 0x20, count: 64 << 10))   // part of the body; may hit a closed socket
                let r = try #require(try raw.readResponse(), "no answer to a 2 MiB body")
                expectOpenAIError(r, status: 413, "2 MiB body")
            }
            // Oversized headers (limit 16 KiB).
            do {
                let raw = try RawConnection(path: s.socketPath)
                let big = String(repeating: "a", count: 20 << 10)
                raw.write("GET /health HTTP/1.1\r\nHost: x\r\nX-Big: \(big)\r\n\r\n")
                let r = try #require(try raw.readResponse(), "no answer to 20 KiB of headers")
                expectOpenAIError(r, status: 431, "20 KiB header")
            }
            // A transfer coding other than chunked: 411 (a length is required).
            do {
                let raw = try RawConnection(path: s.socketPath)
                raw.write("POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n")
                let r = try #require(try raw.readResponse(), "no answer to Transfer-Encoding: gzip")
                expectOpenAIError(r, status: 411, "Transfer-Encoding: gzip")
            }
            // Garbage instead of a request line.
            do {
                let raw = try RawConnection(path: s.socketPath)
                raw.write("\u{1}\u{2}NOT HTTP\r\n\r\n")
                let r = try #require(try raw.readResponse(), "no answer to garbage")
                #expect(r.status == 400, "garbage: \(r.status) \(r.text)")
                #expect(jsonObject(r.body)?["error"] != nil, "garbage: \(r.text)")
            }
            // A chunked request body is decoded.
            do {
                let raw = try RawConnection(path: s.socketPath)
                let b = "{\"prompt\":\"chunked body\",\"max_tokens\":50}"
                let (a, z) = (b.prefix(10), b.dropFirst(10))
                raw.write("POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" +
                          "\(String(a.utf8.count, radix: 16))\r\n\(a)\r\n\(String(z.utf8.count, radix: 16))\r\n\(z)\r\n0\r\n\r\n")
                let r = try #require(try raw.readResponse())
                #expect(r.status == 200, "chunked body: \(r.text)")
                #expect(((jsonObject(r.body)?["choices"] as? [[String: Any]])?.first?["text"]) as? String == "chunked body")
            }

            // Still serving: health, a completion, and the bystander's stream completed intact.
            #expect(try s.request("GET", "/health").head.status == 200)
            let ok = try s.request("POST", "/v1/completions", json: ["prompt": "still here", "max_tokens": 20])
            #expect(((jsonObject(ok.body)?["choices"] as? [[String: Any]])?.first?["text"]) as? String == "still here")
            let br = try #require(try bystander.readResponse(), "bystander stream lost")
            var got = ""
            for line in br.text.split(separator: "\n") where line.hasPrefix("data: {") {
                got += (((jsonObject(String(line.dropFirst(6)))?["choices"] as? [[String: Any]])?.first?["text"]) as? String) ?? ""
            }
            #expect(got == long, "bystander stream: \(got.count) of \(long.count) bytes")
            #expect(br.text.hasSuffix("data: [DONE]\n\n"))

            // The errors are counted by status in /metrics.
            let metrics = try s.request("GET", "/metrics").text
            for status in ["400", "404", "405", "413", "431"] {
                #expect(metrics.contains("status=\"\(status)\""), "no \(status) in switchyard_requests_total")
            }
        }
    }

    // MARK: Routing

    @Test func sessionsStickToAWorkerAndSpreadOverBoth() throws {
        try withServer(echoArgs) { s in
            let conn = HTTPConnection(endpoint: s.endpoint, timeout: 30)
            for session in ["alice", "bob", "carol"] {
                var seen = Set<String>()
                for i in 0..<15 {
                    let r = try conn.request(method: "POST", path: "/v1/completions", headers: [("X-Session-Id", session)],
                                             body: jsonBytes(["prompt": "turn \(i)", "max_tokens": 16]))
                    #expect(r.head.status == 200)
                    seen.insert(r.head.header("x-switchyard-worker") ?? "none")
                }
                #expect(seen.count == 1, "session \(session) moved between workers: \(seen)")
            }
            // Body session_id works like the header.
            var bodySeen = Set<String>()
            for i in 0..<5 {
                let r = try conn.request(method: "POST", path: "/v1/completions",
                                         body: jsonBytes(["prompt": "b \(i)", "max_tokens": 8, "session_id": "dave"]))
                bodySeen.insert(r.head.header("x-switchyard-worker") ?? "none")
            }
            #expect(bodySeen.count == 1, "body session_id moved: \(bodySeen)")

            var counts: [String: Int] = [:]
            for i in 0..<40 {
                let r = try conn.request(method: "POST", path: "/v1/completions", headers: [("X-Session-Id", "user-\(i)")],
                                         body: jsonBytes(["prompt": "hi", "max_tokens": 4]))
                counts[r.head.header("x-switchyard-worker") ?? "none", default: 0] += 1
            }
            let used = Set(counts.keys)
            let fewest = counts.values.min() ?? 0
            let summary = "\(counts)"
            #expect(used == ["0", "1"], "40 sessions over 2 workers: \(summary)")
            #expect(fewest >= 8, "40 sessions spread very unevenly: \(summary)")
        }
    }

    /// A follow-up turn whose prompt repeats the previous prompt and answer reuses all of it from the
    /// session cache, whether the answer ended by itself or was cut by max_tokens.
    @Test func followUpTurnsReuseTheSessionCache() throws {
        try withServer(echoArgs) { s in
            func complete(_ prompt: String, _ maxTokens: Int) throws -> (text: String, prompt: Int, completion: Int, cached: Int, worker: String) {
                let r = try s.request("POST", "/v1/completions", json: ["prompt": prompt, "max_tokens": maxTokens],
                                      headers: [("X-Session-Id", "follow-up")])
                let o = try #require(jsonObject(r.body), "\(r.text)")
                let u = o["usage"] as? [String: Any] ?? [:]
                return (((o["choices"] as? [[String: Any]])?.first?["text"] as? String) ?? "",
                        u["prompt_tokens"] as? Int ?? -1, u["completion_tokens"] as? Int ?? -1,
                        (u["prompt_tokens_details"] as? [String: Any])?["cached_tokens"] as? Int ?? -1,
                        r.head.header("x-switchyard-worker") ?? "none")
            }
            var prompt = "turn one. "
            var prev = try complete(prompt, 1000)             // ends by itself (stop)
            #expect(prev.cached == 0)
            for (i, maxTokens) in [5, 7, 1000, 3].enumerated() {  // cut by max_tokens except the third
                prompt += prev.text + " turn \(i + 2). "
                let next = try complete(prompt, maxTokens)
                #expect(next.worker == prev.worker)
                #expect(next.cached >= prev.prompt + prev.completion,
                        "turn \(i + 2): cached \(next.cached) < previous prompt \(prev.prompt) + completion \(prev.completion)")
                #expect(next.cached < next.prompt)
                prev = next
            }
        }
    }

    // MARK: Worker death

    @Test func killingAWorkerMidStreamEndsThatStreamWithAnErrorEvent() throws {
        try withServer(echoArgs) { s in
            // A long answer: the echo engine streams its 32 KB prompt back byte by byte (the echo context is
            // 64 Ki tokens, prompt and answer together).
            let long = String(repeating: "kill-me-", count: 32_000 / 8)
            var outcome: (r: StreamedResponse, v: (id: Int, pid: pid_t))?
            for attempt in 1...3 {
                let before = try s.waitWorkers(2)
                let conn = HTTPConnection(endpoint: s.endpoint, timeout: 30)
                var victim: (id: Int, pid: pid_t)?
                var workerHeader: String?
                let r = try streamRequest(conn, path: "/v1/completions",
                                          json: ["prompt": long, "max_tokens": 1_000_000, "stream": true],
                                          headers: [("X-Session-Id", "victim-\(attempt)")],
                                          onHead: { workerHeader = $0.header("x-switchyard-worker") }, onEvent: { i, _ in
                    if i == 1 && victim == nil {
                        // The header names the worker serving this stream; kill exactly that process.
                        if let h = workerHeader, let id = Int(h), let pid = before[id] {
                            victim = (id, pid)
                            kill(pid, SIGKILL)
                        }
                    }
                    return true
                })
                let v = try #require(victim, "no worker was killed (X-Switchyard-Worker: \(r.head.header("x-switchyard-worker") ?? "none"), workers \(before))")
                if r.text.count == long.count && r.finishReason == "stop" && r.errors.isEmpty {
                    // The whole answer came back: the worker had produced all 32 000 tokens before the SIGKILL
                    // landed (this client was descheduled that long on a loaded machine), so nothing was cut
                    // mid-stream. A killed worker cannot send what it never produced, so a complete answer
                    // means exactly that: wait for the respawn and try again.
                    _ = waitUntil(20) { (s.workers()[v.id]).map { $0 != v.pid } ?? false }
                    _ = waitUntil(20) { (try? s.request("GET", "/health").head.status) == 200 }
                    continue
                }
                outcome = (r, v)
                break
            }
            let (r, v) = try #require(outcome, "in 3 attempts the worker finished its whole answer before the kill landed")
            #expect(r.head.status == 200)
            #expect(r.text.count < long.count, "the stream ran to completion although its worker was killed")
            #expect(r.errors.count == 1, "expected one SSE error event, events end with: \(r.events.suffix(3))")
            if let e = r.errors.first {
                #expect((e["message"] as? String)?.isEmpty == false)
                #expect(e["type"] is String)
            }
            #expect(r.endsWithDone, "after the error event the stream ends with [DONE]: \(r.events.suffix(2))")
            #expect(r.finishReason != "stop")
            #expect(Proc.isGone(v.pid) || !s.workers().values.contains(v.pid))

            // The server keeps serving (the other worker at once), the dead worker is respawned...
            #expect(try s.request("GET", "/metrics").head.status == 200)
            let ok = try s.request("POST", "/v1/completions", json: ["prompt": "after the kill", "max_tokens": 32])
            #expect(ok.head.status == 200, "right after the kill: \(ok.text)")
            var fresh: pid_t?
            #expect(waitUntil(20) {
                if let p = s.workers()[v.id], p != v.pid { fresh = p; return true }
                return false
            }, "worker \(v.id) was not respawned")
            #expect(waitUntil(20) { (try? s.request("GET", "/health").head.status) == 200 }, "not healthy again")
            let metrics = try s.request("GET", "/metrics").text
            let restarts = metrics.split(separator: "\n").first { $0.hasPrefix("switchyard_worker_restarts_total") }
            #expect(restarts.map { Double($0.split(separator: " ").last ?? "") ?? 0 } ?? 0 >= 1,
                    "switchyard_worker_restarts_total: \(restarts.map(String.init) ?? "missing")")
            #expect(s.log.contains("worker \(v.id)"), "the log says nothing about worker \(v.id)")

            // ...and the fresh worker answers: find sessions that land on it.
            var servedByFresh = 0
            for i in 0..<40 where servedByFresh < 3 {
                let a = try s.request("POST", "/v1/completions", json: ["prompt": "fresh \(i)", "max_tokens": 32],
                                      headers: [("X-Session-Id", "after-\(i)")])
                #expect(a.head.status == 200, "\(a.text)")
                #expect(((jsonObject(a.body)?["choices"] as? [[String: Any]])?.first?["text"]) as? String == "fresh \(i)")
                if a.head.header("x-switchyard-worker") == "\(v.id)" { servedByFresh += 1 }
            }
            #expect(servedByFresh > 0, "no request was served by the respawned worker \(v.id) (pid \(fresh.map(String.init) ?? "?"))")
        }
    }

    /// A worker that hangs (SIGSTOP: alive, but its heartbeat stands still) is killed and respawned, and the
    /// server serves meanwhile.
    @Test func hungWorkerIsDetectedByItsHeartbeat() throws {
        try withServer(echoArgs + ["--heartbeat-timeout", "1"]) { s in
            let before = s.workers()
            let victim = try #require(before[0], "no worker 0 among \(before)")
            kill(victim, SIGSTOP)
            defer { kill(victim, SIGCONT) }
            var fresh: pid_t?
            #expect(waitUntil(20) {
                if let p = s.workers()[0], p != victim { fresh = p; return true }
                return false
            }, "the stopped worker was not replaced")
            #expect(Proc.isGone(victim) || !s.workers().values.contains(victim))
            #expect(s.log.contains("heartbeat"), "the log does not mention the heartbeat")
            #expect(waitUntil(20) { (try? s.request("GET", "/health").head.status) == 200 }, "not healthy again")
            let r = try s.request("POST", "/v1/completions", json: ["prompt": "still here", "max_tokens": 16])
            #expect(r.head.status == 200)
            #expect(fresh != nil)
        }
    }

    /// A worker that never becomes ready (its model "file" is a FIFO nobody writes, so opening it blocks)
    /// is killed after --startup-timeout and started again; the server answers 503 meanwhile and still
    /// shuts down cleanly.
    @Test func aWorkerStuckLoadingIsRestartedAfterTheStartupTimeout() throws {
        let dir = try Paths.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let fifo = dir + "/stuck.gguf"
        #expect(mkfifo(fifo, 0o600) == 0)
        let s = try Server.launch(["--engine", "model", "--model", fifo, "--workers", "1", "--startup-timeout", "1"])
        defer { s.stop(); s.cleanUp() }
        let first = try s.waitWorkers(1)[0]
        #expect(waitUntil(20) { s.log.contains("not ready 1.0 s after start") }, "no start-up timeout:\n\(s.logTail())")
        #expect(waitUntil(20) { s.workers()[0].map { $0 != first } ?? false }, "the stuck worker was not replaced:\n\(s.logTail())")
        #expect(first.map { Proc.isGone($0) } ?? false, "the stuck worker is still running")
        let r = try s.request("GET", "/health")
        #expect(r.head.status == 503, "health while no worker is ready: \(r.head.status) \(r.text)")
        s.stop(grace: 20)
        #expect(s.exitCode == 0, "serve did not exit 0: \(s.describeStatus())\n\(s.logTail())")
    }

    /// A client that hangs up mid-stream cancels its request on the worker (long before it would end).
    @Test func aClientHangUpCancelsItsRequestOnTheWorker() throws {
        try withServer(echoArgs) { s in
            func busy() -> Double {   // in-flight requests + running sequences over all workers
                let m = (try? s.request("GET", "/metrics").text) ?? ""
                return m.split(separator: "\n")
                    .filter { $0.hasPrefix("switchyard_worker_in_flight{") || $0.hasPrefix("switchyard_worker_running{") }
                    .reduce(0) { $0 + (Double($1.split(separator: " ").last ?? "") ?? 0) }
            }
            let long = String(repeating: "cancel-me ", count: 3_000)   // ~3 s of echo streaming
            let raw = try RawConnection(path: s.socketPath)
            let body = "{\"prompt\":\"\(long)\",\"max_tokens\":100000,\"stream\":true}"
            #expect(raw.write("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"))
            #expect(waitUntil(5) { busy() >= 1 }, "the stream never showed up in /metrics")
            let hungUp = Date()
            Glibc.shutdown(raw.fd, Int32(SHUT_RDWR))
            #expect(waitUntil(10) { busy() == 0 }, "request still in flight after the client left")
            let took = Date().timeIntervalSince(hungUp)
            #expect(took < 1.5, "the cancelled request stayed in flight \(took) s (the whole stream takes ~3 s)")
            // What the worker generated before the cancel reached it is counted (the only request so far).
            func generated() -> Double {
                let m = (try? s.request("GET", "/metrics").text) ?? ""
                let line = m.split(separator: "\n").first { $0.hasPrefix("switchyard_tokens_generated_total ") }
                return line.flatMap { Double($0.split(separator: " ").last ?? "") } ?? 0
            }
            #expect(waitUntil(5) { generated() > 0 }, "tokens of the cancelled request not counted")
            let r = try s.request("POST", "/v1/completions", json: ["prompt": "next", "max_tokens": 8])
            #expect(r.head.status == 200)
        }
    }

    /// A request queued on a worker that dies before starting it goes to the other worker.
    @Test func aRequestNotYetStartedMovesToTheOtherWorkerWhenItsWorkerDies() throws {
        try withServer(echoArgs) { s in
            let workers = try s.waitWorkers(2)
            // A session that lands on worker 0.
            var session: String?
            for i in 0..<64 where session == nil {
                let r = try s.request("POST", "/v1/completions", json: ["prompt": "p", "max_tokens": 1],
                                      headers: [("X-Session-Id", "stopped-\(i)")])
                if r.head.header("x-switchyard-worker") == "0" { session = "stopped-\(i)" }
            }
            let sid = try #require(session, "no session routed to worker 0")
            let victim = try #require(workers[0])
            // Freeze worker 0, queue a request on it, then kill it: the request never started.
            kill(victim, SIGSTOP)
            final class Box: @unchecked Sendable { var result: Result<HTTPResponse, Error>? }   // written before group.leave
            let box = Box()
            let group = DispatchGroup()
            group.enter()
            let endpoint = s.endpoint
            Thread {
                let c = HTTPConnection(endpoint: endpoint, timeout: 30)
                box.result = Result { try c.request(method: "POST", path: "/v1/completions", headers: [("X-Session-Id", sid)],
                                                    body: jsonBytes(["prompt": "rerouted", "max_tokens": 32])) }
                group.leave()
            }.start()
            usleep(300_000)
            #expect(group.wait(timeout: .now()) == .timedOut, "the request finished although its worker was stopped")
            kill(victim, SIGKILL)
            #expect(group.wait(timeout: .now() + 20) == .success, "the request hung after its worker died")
            let r = try #require(try box.result?.get())
            #expect(r.head.status == 200, "\(r.text)")
            // The request was re-routed inside WorkerPool; the response names the worker that served it.
            #expect(r.head.header("x-switchyard-worker") == "1", "served by \(r.head.header("x-switchyard-worker") ?? "none")")
            #expect(((jsonObject(r.body)?["choices"] as? [[String: Any]])?.first?["text"]) as? String == "rerouted")
        }
    }

    // MARK: Shutdown

    /// SWITCHYARD_TRACE=DIR: at a graceful stop the front and each worker write their request-path
    /// timestamps (what `switchyard-bench front --breakdown` joins); every point of every request is there,
    /// in the order the request passes them.
    @Test func traceFilesHoldEveryPointInOrder() throws {
        let traceDir = try Paths.tempDir()
        defer { try? FileManager.default.removeItem(atPath: traceDir) }
        let s = try Server.start(["--engine", "echo", "--workers", "1"], env: ["SWITCHYARD_TRACE": traceDir])
        let c = HTTPConnection(endpoint: s.endpoint, timeout: 30)
        for _ in 0..<5 {
            // One token: the delta and the done leave in one step (the breakdown's request), so the front's
            // first record comes after the worker's last point.
            let r = try c.request(method: "POST", path: "/v1/completions", body: jsonBytes(["prompt": "hi", "max_tokens": 1]))
            #expect(r.head.status == 200)
        }
        c.close()
        s.signal(SIGTERM)
        #expect(s.waitExit(timeout: 20), "server still running 20 s after SIGTERM; log:\n\(s.logTail())")
        #expect(s.exitCode == 0, "exit: \(s.describeStatus()); log:\n\(s.logTail())")
        func rows(_ name: String) throws -> [UInt64: [UInt64]] {
            let text = try String(contentsOfFile: traceDir + "/" + name, encoding: .utf8)
            var out: [UInt64: [UInt64]] = [:]
            for line in text.split(separator: "\n") {
                let v = line.split(separator: " ").compactMap { UInt64($0) }
                if v.count == 13 { out[v[0]] = Array(v[1...]) }
            }
            return out
        }
        let front = try rows("front.trace"), worker = try rows("worker-0.trace")
        #expect(Set(front.keys) == [1, 2, 3, 4, 5] && Set(worker.keys) == [1, 2, 3, 4, 5], "\(front.keys) \(worker.keys)")
        for id in UInt64(1)...5 {
            guard let f = front[id], let w = worker[id] else { continue }
            // front recv, parsed, decoded, submitted → worker seen, admitted, done, committed → front seen,
            // drained, final, queued (points 0...11 of sy_trace.h; 4...7 are the worker's).
            let path = [f[0], f[1], f[2], f[3], w[4], w[5], w[6], w[7], f[8], f[9], f[10], f[11]]
            #expect(!path.contains(0), "request \(id): a point is missing: \(path)")
            #expect(path == path.sorted(), "request \(id): points out of order: \(path)")
            #expect(f[4...7].allSatisfy { $0 == 0 } && w[0...3].allSatisfy { $0 == 0 } && w[8...].allSatisfy { $0 == 0 })
        }
        if s.exitCode == 0 { s.cleanUp() }
    }

    @Test func sigtermLetsAStreamFinishThenExitsCleanly() throws {
        let s = try Server.start(echoArgs)
        defer { s.stop() }
        let workers = try s.waitWorkers(2)
        let prompt = String(repeating: "graceful ", count: 1000)   // 9 KB: streamed over many steps
        let conn = HTTPConnection(endpoint: s.endpoint, timeout: 30)
        var refusedWhileDraining = false
        let r = try streamRequest(conn, path: "/v1/completions",
                                  json: ["prompt": prompt, "max_tokens": 100_000, "stream": true], onEvent: { i, _ in
            if i == 2 {
                s.signal(SIGTERM)
                // New connections are refused while the stream drains.
                refusedWhileDraining = waitUntil(5) {
                    do { _ = try RawConnection(path: s.socketPath, timeout: 1); return false } catch { return true }
                }
            }
            return true
        })
        conn.close()   // else the server lingers (waits for our EOF) before it closes the connection and exits
        #expect(refusedWhileDraining, "the socket still accepted connections after SIGTERM")
        #expect(r.endsWithDone, "stream cut by the shutdown; last events \(r.events.suffix(2))")
        #expect(r.finishReason == "stop")
        #expect(r.text == prompt, "streamed \(r.text.utf8.count) of \(prompt.utf8.count) bytes")
        #expect(r.errors.isEmpty)
        #expect(s.waitExit(timeout: 20), "server still running 20 s after SIGTERM; log:\n\(s.logTail())")
        #expect(s.exitCode == 0, "exit: \(s.describeStatus()); log:\n\(s.logTail())")
        #expect(access(s.socketPath, F_OK) != 0, "socket file left behind")
        #expect(waitUntil(5) { workers.values.allSatisfy(Proc.isGone) }, "worker processes remain: \(workers)")
        #expect(!s.log.contains("did not stop in time"), "workers had to be killed:\n\(s.logTail())")
        if s.exitCode == 0 { s.cleanUp() }
    }

    // MARK: Descriptors

    @Test func noDescriptorLeaksAfterAThousandConnections() throws {
        try withServer(echoArgs) { s in
            // Warm up (first requests may open lazily created descriptors), then count.
            for _ in 0..<5 { _ = try s.request("POST", "/v1/completions", json: ["prompt": "warm", "max_tokens": 4]) }
            let before = Proc.fdCount(s.pid)
            #expect(before > 0)
            for i in 0..<1000 {
                switch i % 5 {
                case 0, 1:   // a full request, then close
                    let r = try s.request("GET", "/health")
                    #expect(r.head.status == 200)
                case 2:      // a completion
                    let r = try s.request("POST", "/v1/completions", json: ["prompt": "c\(i)", "max_tokens": 8])
                    #expect(r.head.status == 200)
                case 3:      // connect and hang up without a byte
                    _ = try RawConnection(path: s.socketPath)
                default:     // half a request, then hang up
                    let raw = try RawConnection(path: s.socketPath)
                    raw.write("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"pro")
                }
            }
            // Hang-ups are seen asynchronously: give the loop a moment to close them.
            var after = 0
            let settled = waitUntil(10) { after = Proc.fdCount(s.pid); return after <= before }
            #expect(settled, "server descriptors: \(before) before, \(after) after 1,000 connections")
            #expect(try s.request("GET", "/health").head.status == 200)
        }
    }

    // MARK: Socket file

    @Test func staleSocketIsReplacedAndALiveOneRefused() throws {
        let dir = try Paths.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/stale.sock"
        // A socket file whose server is gone: bind, then close without unlinking.
        do {
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            var addr = sockaddr_un()
            addr.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &addr.sun_path) { p in
                for (i, b) in path.utf8.enumerated() { p[i] = b }
            }
            let rc = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            #expect(rc == 0)
            listen(fd, 1)
            Glibc.close(fd)
        }
        #expect(access(path, F_OK) == 0)
        let first = try Server.start(echoArgs, socketPath: path)
        defer { first.stop() }
        #expect(try first.request("GET", "/health").head.status == 200)

        // A second server on the live socket must refuse to start and leave the first one alone.
        let second = try Server.launch(echoArgs, socketPath: path)
        defer { second.stop() }
        #expect(second.waitExit(timeout: 30), "a second server started on a live socket")
        #expect(second.exitCode.map { $0 != 0 } ?? false, "second server: \(second.describeStatus())")
        #expect(second.log.lowercased().contains("already") || second.log.lowercased().contains("live")
                || second.log.lowercased().contains("another"), "second server's message: \(second.logTail())")
        #expect(try first.request("GET", "/health").head.status == 200, "the first server lost its socket")
        let r = try first.request("POST", "/v1/completions", json: ["prompt": "still mine", "max_tokens": 16])
        #expect(((jsonObject(r.body)?["choices"] as? [[String: Any]])?.first?["text"]) as? String == "still mine")

        // A regular file at the path is never removed.
        let file = dir + "/file.sock"
        FileManager.default.createFile(atPath: file, contents: Data("keep me".utf8))
        let third = try Server.launch(echoArgs, socketPath: file)
        defer { third.stop() }
        #expect(third.waitExit(timeout: 30), "a server started on a regular file")
        #expect(third.exitCode.map { $0 != 0 } ?? false)
        #expect((try? String(contentsOfFile: file, encoding: .utf8)) == "keep me")
        first.stop()
        #expect(first.exitCode == 0)
        #expect(access(path, F_OK) != 0)
    }

    // MARK: Metrics, tokenize

    @Test func metricsHaveTheServerAndPerWorkerSeries() throws {
        try withServer(echoArgs) { s in
            _ = try s.request("POST", "/v1/completions", json: ["prompt": "count me", "max_tokens": 16])
            _ = try streamRequest(HTTPConnection(endpoint: s.endpoint), path: "/v1/completions",
                                  json: ["prompt": "and me", "max_tokens": 16, "stream": true])
            let r = try s.request("GET", "/metrics")
            #expect(r.head.status == 200)
            #expect((r.head.header("content-type") ?? "").contains("text/plain"))
            let m = r.text
            for w in ["0", "1"] {
                for series in ["switchyard_worker_ready", "switchyard_worker_in_flight", "switchyard_worker_queue_depth",
                               "switchyard_ring_occupancy"] {
                    #expect(m.split(separator: "\n").contains { $0.hasPrefix(series + "{") && $0.contains("worker=\"\(w)\"") },
                            "\(series) for worker \(w) missing")
                }
                #expect(m.split(separator: "\n").contains { $0.hasPrefix("switchyard_worker_ready{") && $0.contains("worker=\"\(w)\"") && $0.hasSuffix(" 1") },
                        "worker \(w) not ready in /metrics")
            }
            #expect(m.contains("switchyard_worker_restarts_total 0"))
            #expect(m.contains("switchyard_requests_total{") && m.contains("route=\"completions\""))
            #expect(m.contains("switchyard_time_to_first_token_seconds_bucket"))
            #expect(m.contains("switchyard_tokens_generated_total"))
            // Every non-comment line is `name{labels} value`.
            for line in m.split(separator: "\n") where !line.hasPrefix("#") {
                #expect(Double(line.split(separator: " ").last ?? "") != nil, "bad metrics line: \(line)")
            }
        }
    }

    @Test func tokenizeAndDetokenizeRoundTrip() throws {
        try withServer(echoArgs) { s in
            let text = "héllo wörld ✓ 🚂"
            let t = try s.request("POST", "/tokenize", json: ["content": text, "add_special": false, "parse_special": true])
            #expect(t.head.status == 200, "\(t.text)")
            let tokens = try #require(jsonObject(t.body)?["tokens"] as? [Int], "\(t.text)")
            #expect(tokens == text.utf8.map(Int.init), "the echo tokenizer's tokens are the UTF-8 bytes")
            let d = try s.request("POST", "/detokenize", json: ["tokens": tokens])
            #expect(d.head.status == 200, "\(d.text)")
            #expect(jsonObject(d.body)?["content"] as? String == text)
            expectOpenAIError(try s.request("POST", "/detokenize", json: ["tokens": "nope"]), status: 400, "tokens not an array")
        }
    }

    /// Requests and replies over what a ring record carries are the client's 400, whatever the ring's write
    /// position, and never take a worker down: a tokenize whose reply (4 bytes per token) exceeds the response
    /// ring's record limit, a detokenize of an id outside the vocabulary, a prompt of 800 KB (under the
    /// 1 MiB body limit, over half the request ring), sent several times so the write position moves.
    @Test func oversizedRequestsAndRepliesAreRefusedWithoutHarm() throws {
        try withServer(echoArgs) { s in
            let before = try s.waitWorkers(2)
            let huge = try s.request("POST", "/tokenize", json: ["content": String(repeating: "7", count: 270_000)])
            expectOpenAIError(huge, status: 400, "tokenize reply of 270 000 tokens")
            #expect(huge.text.contains("too large"), "\(huge.text)")
            expectOpenAIError(try s.request("POST", "/detokenize", json: ["tokens": [104, 300]]), status: 400, "token id 300")
            for k in 0..<4 {
                let r = try s.request("POST", "/v1/completions", json: ["prompt": String(repeating: "a", count: 800_000), "max_tokens": 1])
                expectOpenAIError(r, status: 400, "800 KB prompt, try \(k)")
                #expect(r.text.contains("request_too_large"), "\(r.text)")
                let ok = try s.request("POST", "/v1/completions", json: ["prompt": String(repeating: "b", count: 20_000 + 10_000 * k), "max_tokens": 1])
                #expect(ok.head.status == 200, "a 20-50 KB prompt (the echo context is 65 536 bytes): \(ok.head.status)")
            }
            #expect(try s.waitWorkers(2) == before, "a worker was restarted")
            let m = try s.request("GET", "/metrics").text
            #expect(m.contains("switchyard_worker_restarts_total 0"))
        }
    }
}
