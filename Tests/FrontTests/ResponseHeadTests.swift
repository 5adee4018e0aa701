import Testing
@testable import Front
import Wire

/// ResponseWriter.head appends its lines piece by piece (no interpolation on the hot path): the bytes must be
/// exactly the header block the text says.
@Suite struct ResponseHeadTests {
    private func head(status: Int, type: String?, length: Int?, chunked: Bool = false, keepAlive: Bool = true,
                      worker: Int? = nil, extra: [(String, String)] = []) -> String {
        var out = ByteWriter(capacity: 16)
        out.append("prefix|")   // appends, never replaces
        ResponseWriter.head(&out, status: status, contentType: type, contentLength: length, chunked: chunked,
                            keepAlive: keepAlive, worker: worker, extra: extra)
        return String(decoding: out.bytes, as: UTF8.self)
    }

    @Test func okJSONWithWorker() {
        #expect(head(status: 200, type: "application/json", length: 1234, worker: 3)
            == "prefix|HTTP/1.1 200 OK\r\nServer: switchyard\r\nContent-Type: application/json\r\nContent-Length: 1234\r\n"
             + "Connection: keep-alive\r\nX-Switchyard-Worker: 3\r\n\r\n")
        // Beside the joined fast path: the same head closing, without a worker, and with zero numbers.
        #expect(head(status: 200, type: "application/json", length: 7, keepAlive: false, worker: 12)
            == "prefix|HTTP/1.1 200 OK\r\nServer: switchyard\r\nContent-Type: application/json\r\nContent-Length: 7\r\n"
             + "Connection: close\r\nX-Switchyard-Worker: 12\r\n\r\n")
        #expect(head(status: 200, type: "application/json", length: 15)
            == "prefix|HTTP/1.1 200 OK\r\nServer: switchyard\r\nContent-Type: application/json\r\nContent-Length: 15\r\n"
             + "Connection: keep-alive\r\n\r\n")
        #expect(head(status: 200, type: "application/json", length: 0, worker: 0)
            == "prefix|HTTP/1.1 200 OK\r\nServer: switchyard\r\nContent-Type: application/json\r\nContent-Length: 0\r\n"
             + "Connection: keep-alive\r\nX-Switchyard-Worker: 0\r\n\r\n")
    }

    @Test func otherStatusTypeAndExtras() {
        #expect(head(status: 503, type: "text/plain; version=0.0.4", length: 0, keepAlive: false, extra: [("Retry-After", "1")])
            == "prefix|HTTP/1.1 503 Service Unavailable\r\nServer: switchyard\r\nContent-Type: text/plain; version=0.0.4\r\n"
             + "Content-Length: 0\r\nConnection: close\r\nRetry-After: 1\r\n\r\n")
        #expect(head(status: 200, type: "text/event-stream", length: nil, chunked: true, worker: 0)
            == "prefix|HTTP/1.1 200 OK\r\nServer: switchyard\r\nContent-Type: text/event-stream\r\n"
             + "Transfer-Encoding: chunked\r\nConnection: keep-alive\r\nX-Switchyard-Worker: 0\r\n\r\n")
        #expect(head(status: 100, type: nil, length: nil) == "prefix|HTTP/1.1 100 Continue\r\nServer: switchyard\r\nConnection: keep-alive\r\n\r\n")
    }

    /// JSON strings: plain ones are copied in one go, the rest escaped byte by byte; ids and integers are
    /// written without intermediate Strings.
    @Test func jsonWriterStringsAndIds() {
        var w = JSONWriter()
        w.string("plain é €"); w.raw(","); w.string("q\"b\\n\nt\tc\u{1}"); w.raw(","); w.int(-12); w.raw(","); w.int(0)
        #expect(String(decoding: w.bytes, as: UTF8.self) == #""plain é €","q\"b\\n\nt\tc\u0001",-12,0"#)
        // One writer reused across bodies, as the event loop does.
        var body = JSONWriter()
        OpenAIEncoder.completion(CompletionIdentity(number: 42, created: 7, model: "m", chat: true), text: "hi",
                                 finish: .stop, usage: Usage(promptTokens: 1, completionTokens: 2, cachedTokens: 0), into: &body)
        #expect(String(decoding: body.bytes, as: UTF8.self).hasPrefix(#"{"id":"chatcmpl-42","object":"chat.completion","created":7,"model":"m""#))
        body.reset()
        OpenAIEncoder.completion(CompletionIdentity(number: 9, created: 7, model: "m", chat: false), text: "hi",
                                 finish: .length, usage: Usage(promptTokens: 1, completionTokens: 2, cachedTokens: 0), into: &body)
        #expect(String(decoding: body.bytes, as: UTF8.self).hasPrefix(#"{"id":"cmpl-9","object":"text_completion""#))
    }

    @Test func decimals() {
        for v in [0, 7, 9, 10, 99, 100, 65535, 1_000_000, Int.max, -1, -42, Int.min] {
            var out = ByteWriter(capacity: 1)   // grows on the way
            out.append(120)   // "x"
            out.appendDecimal(v)
            #expect(String(decoding: out.bytes, as: UTF8.self) == "x" + String(v))
        }
    }
}

@Suite struct FrontCPUProbeTests {
    /// The bench's probe runs its pieces on a valid request (no timing is checked here) and refuses a request
    /// it cannot parse or decode instead of timing nothing.
    @Test func runsAndRefusesBadRequests() throws {
        let body = #"{"prompt":"h","max_tokens":1}"#
        let req = Array("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)".utf8)
        let r = try FrontCPUProbe.run(request: req, iterations: 50)
        #expect(r.parseNs > 0 && r.decodeNs > 0 && r.responseNs > 0 && r.healthNs > 0 && r.recordsNs > 0)
        #expect(throws: FrontCPUProbe.ProbeError.self) { try FrontCPUProbe.run(request: Array("GET / HTTP/1.1\r\n".utf8), iterations: 5) }
        let bad = Array("POST /v1/completions HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}".utf8)
        #expect(throws: FrontCPUProbe.ProbeError.self) { try FrontCPUProbe.run(request: bad, iterations: 5) }
    }
}

/// ByteWriter: appends of every kind across many regrowths give exactly the bytes an array would hold.
@Suite struct ByteWriterTests {
    @Test func growsAndKeepsEveryByte() {
        var w = ByteWriter(capacity: 1)
        var expected: [UInt8] = []
        for k in 0..<3000 {
            switch k % 5 {
            case 0: w.append(UInt8(k & 0xFF)); expected.append(UInt8(k & 0xFF))
            case 1: w.append("ab\r\n"); expected += Array("ab\r\n".utf8)
            case 2: let a = (0..<(k % 97)).map { UInt8(($0 + k) & 0xFF) }; w.append(a); expected += a
            case 3: let v = (k % 2 == 0 ? -1 : 1) * k * 7919; w.appendDecimal(v); expected += Array(String(v).utf8)
            default: w.append([]); w.append(UnsafeRawBufferPointer(start: nil, count: 0))
            }
            #expect(w.count == expected.count)
        }
        #expect(w.bytes == expected)
        #expect(w.withBytes { Array($0) } == expected)
        for v in [0, 9, 10, Int.max, Int.min, -1] {
            w.reset()
            w.appendDecimal(v)
            #expect(String(decoding: w.bytes, as: UTF8.self) == String(v))
        }
        for v in [0, 1, 15, 16, 255, 4096, 65535, 1 << 20, Int.max] {
            for minDigits in [1, 2, 4] {
                w.reset()
                w.appendHex(v, minDigits: minDigits)
                let plain = String(v, radix: 16)
                #expect(String(decoding: w.bytes, as: UTF8.self) == String(repeating: "0", count: max(0, minDigits - plain.count)) + plain)
            }
        }
    }
}
