import Testing
@testable import Front

private func parse(_ s: String, limits: HTTPLimits = HTTPLimits()) -> HTTPParseResult {
    var p = HTTPRequestParser(limits: limits)
    return Array(s.utf8).withUnsafeBytes { p.parse($0) }
}

/// A pipelined stream parsed request by request, the parser reset between them; nil (and an issue recorded) if
/// a request does not complete.
private func parseAll(_ s: String, sourceLocation: SourceLocation = #_sourceLocation) -> [HTTPRequest]? {
    let bytes = Array(s.utf8)
    var p = HTTPRequestParser()
    var off = 0
    var out: [HTTPRequest] = []
    while off < bytes.count {
        guard case .complete(let r, let n) = bytes[off...].withUnsafeBytes({ p.parse($0) }) else {
            Issue.record("stuck at byte \(off)", sourceLocation: sourceLocation)
            return nil
        }
        out.append(r)
        off += n
        p.reset()
    }
    return out
}

private func failure(_ s: String, limits: HTTPLimits = HTTPLimits()) -> HTTPParseError? {
    if case .failure(let e) = parse(s, limits: limits) { return e }
    return nil
}

@Suite struct HTTPParserTests {
    @Test func simpleGet() throws {
        let text = "GET /health?x=1 HTTP/1.1\r\nHost: a\r\nX-Y:  v  \r\n\r\n"
        guard case .complete(let r, let n) = parse(text) else { Issue.record("not complete"); return }
        #expect(n == text.utf8.count)
        #expect(r.head.method == "GET")
        #expect(r.head.path == "/health")
        #expect(r.head.header("x-y") == "v")
        #expect(r.head.keepAlive)
        #expect(r.body.isEmpty)
    }

    /// The head keeps the received block and a table of field ranges; names and values are read from it on
    /// demand. Lookups ignore the name's case, values lose surrounding spaces and tabs, every field (many,
    /// long names, repeated names, empty values, obs-text) comes back in order.
    @Test func fieldsFromTheBlock() throws {
        var lines: [(String, String)] = [("Host", "x"), ("X-Stainless-Package-Version", "1.52.0"),
                                         ("CONTENT-TYPE", "application/json; charset=utf-8"), ("X-Empty", ""),
                                         ("x-dup", "first"), ("X-Dup", "second"), ("X-Obs", "caf\u{E9}")]
        for k in 0..<40 { lines.append(("X-Field-\(k)-" + String(repeating: "n", count: k), String(repeating: "v", count: k))) }
        var text = "POST /v1/chat/completions?stream=1 HTTP/1.1\r\n"
        for (n, v) in lines { text += "\(n):\t \(v) \t\r\n" }
        text += "Content-Length: 2\r\n\r\nok"
        guard case .complete(let r, let consumed) = parse(text) else { Issue.record("not complete"); return }
        #expect(consumed == text.utf8.count && r.body == Array("ok".utf8))
        #expect(r.head.method == "POST" && r.head.methodIs("POST") && !r.head.methodIs("POS") && !r.head.methodIs("post"))
        #expect(r.head.target == "/v1/chat/completions?stream=1" && r.head.path == "/v1/chat/completions")
        #expect(r.head.withPath { Array($0) } == Array("/v1/chat/completions".utf8))
        #expect(r.head.header("content-type") == "application/json; charset=utf-8")
        #expect(r.head.header("x-stainless-package-version") == "1.52.0")
        #expect(r.head.header("x-empty") == "")
        #expect(r.head.header("x-dup") == "first")
        #expect(r.head.header("x-obs") == "caf\u{E9}")
        #expect(r.head.header("x-field-39-" + String(repeating: "n", count: 39)) == String(repeating: "v", count: 39))
        #expect(r.head.header("x-field-39-") == nil && r.head.header("host2") == nil && r.head.header("") == nil)
        let all = r.head.headers
        #expect(all.count == lines.count + 1)
        for (k, (n, v)) in lines.enumerated() {
            #expect(all[k] == HTTPHeader(name: n.lowercased(), value: v), "field \(k)")
        }
        #expect(all.last == HTTPHeader(name: "content-length", value: "2"))
    }

    /// The fields the parser acts on are recognised whatever their case; near misses of their names or
    /// values are not.
    @Test func specialFieldsWithoutCase() {
        guard case .complete(let a, _) = parse("POST /x HTTP/1.1\r\nHost: x\r\ncOnTeNt-LeNgTh: 1\r\nCONNECTION: Keep-Alive , CLOSE\r\n\r\nz") else {
            Issue.record("not complete"); return
        }
        #expect(a.head.contentLength == 1 && !a.head.keepAlive)
        guard case .complete(let b, _) = parse("GET /x HTTP/1.0\r\nConnection: ,,keep-alive,\r\nContent-Lengths: 5\r\n\r\n") else {
            Issue.record("not complete"); return
        }
        #expect(b.head.keepAlive && b.head.contentLength == 0)
        #expect(failure("POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked2\r\n\r\n") == .unsupportedTransferEncoding)
        #expect(failure("POST /x HTTP/1.1\r\nHost: x\r\nEXPECT: 100-Continue\r\nContent-Length: 1\r\n\r\n") == nil)
        #expect(failure("POST /x HTTP/1.1\r\nHost: x\r\nExpect: 100-continues\r\n\r\n") == .unsupportedExpectation)
        #expect(failure("POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n") == .invalidContentLength)
    }

    /// "close" in Connection wins over "keep-alive" in any order; an absolute-form target (RFC 9112 §3.2.2)
    /// routes by its path.
    @Test func connectionCloseWinsAndAbsoluteForm() throws {
        for v in ["close, keep-alive", "keep-alive, close", "Keep-Alive,CLOSE"] {
            guard case .complete(let r, _) = parse("GET / HTTP/1.1\r\nHost: x\r\nConnection: \(v)\r\n\r\n") else { Issue.record("\(v)"); continue }
            #expect(!r.head.keepAlive, "\(v)")
        }
        let paths = ["http://localhost/v1/models?x=1": "/v1/models", "HTTPS://h:8080/health": "/health",
                     "http://h": "", "http://h?q": "", "*": "*", "/a:b//c": "/a:b//c", "x:/y": "x:/y"]
        for (target, path) in paths {
            guard case .complete(let r, _) = parse("GET \(target) HTTP/1.1\r\nHost: x\r\n\r\n") else { Issue.record("\(target)"); continue }
            #expect(r.head.path == path, "\(target)")
            #expect(r.head.target == target)
        }
    }

    /// The header scan jumps eight bytes at a time to the next CR or LF: the mask must flag exactly the first
    /// one, for every byte value around them.
    @Test func lineBreakMaskFindsTheFirstCROrLF() {
        let interesting: [UInt8] = [0, 9, 10, 11, 12, 13, 14, 0x8a, 0x8d, 0x7f, 0xff, 32, 65]
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<20_000 {
            var bytes = (0..<8).map { _ in interesting.randomElement(using: &rng)! }
            if Bool.random(using: &rng) { bytes[Int.random(in: 0..<8, using: &rng)] = UInt8.random(in: 0...255, using: &rng) }
            let w = bytes.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
            let m = HTTPRequestParser.lineBreakMask(UInt64(littleEndian: w))
            let first = bytes.firstIndex { $0 == 10 || $0 == 13 }
            if let first { #expect(m != 0 && m.trailingZeroBitCount >> 3 == first, "\(bytes)") } else { #expect(m == 0, "\(bytes)") }
        }
    }

    /// Fed one byte at a time (the window growing as from a slow client), a request parses exactly as in one
    /// piece; a bare CR or LF at any position of the header block fails it, whatever its 8-byte alignment.
    @Test func slowClientsAndBareLineBreaksAtEveryOffset() {
        let text = "POST /v1/completions?a=b HTTP/1.1\r\nHost: example\r\nX-Long-Header-Name: some value here\r\n"
            + "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        let bytes = Array(text.utf8)
        guard case .complete(let whole, let n) = parse(text) else { Issue.record("not complete"); return }
        var p = HTTPRequestParser()
        var result: HTTPParseResult = .incomplete
        for k in 1...bytes.count {
            result = Array(bytes[0..<k]).withUnsafeBytes { p.parse($0) }
            if k < bytes.count, result != .incomplete { Issue.record("answered \(result) after \(k) bytes"); return }
        }
        #expect(result == .complete(whole, consumed: n))
        let headerEnd = bytes.count - 6   // before the final CRLF CRLF and the body
        for k in 0..<headerEnd where bytes[k] != 13 && bytes[k] != 10 {
            for bad: UInt8 in [10, 13] {
                var b = bytes
                b[k] = bad
                let r = b.withUnsafeBytes { buf -> HTTPParseResult in var q = HTTPRequestParser(); return q.parse(buf) }
                guard case .failure = r else { Issue.record("bare \(bad) at \(k) accepted: \(r)"); continue }
            }
        }
    }

    /// RFC 9112 §3.2: an HTTP/1.1 request without Host, or any request with two, is a 400 (checked after the
    /// other head errors, so those keep their own status); an empty value is valid, HTTP/1.0 needs none.
    @Test func hostFieldRules() {
        #expect(failure("GET /health HTTP/1.1\r\n\r\n") == .missingHost)
        #expect(failure("GET /health HTTP/1.1\r\nX-Host: a\r\n\r\n") == .missingHost)
        #expect(failure("GET /health HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n") == .duplicateHost)
        #expect(failure("GET /health HTTP/1.0\r\nHOST: a\r\nHost: b\r\n\r\n") == .duplicateHost)
        #expect(failure("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n") == .unsupportedTransferEncoding)
        #expect(HTTPParseError.missingHost.status == 400 && HTTPParseError.missingHost.code == "missing_host")
        #expect(HTTPParseError.duplicateHost.status == 400 && HTTPParseError.duplicateHost.code == "duplicate_host")
        for ok in ["GET /health HTTP/1.1\r\nHost:\r\n\r\n", "GET /health HTTP/1.0\r\n\r\n", "GET /health HTTP/1.1\r\nhOsT: x\r\n\r\n"] {
            guard case .complete = parse(ok) else { Issue.record("not accepted: \(ok.debugDescription)"); continue }
        }
    }

    @Test func http10DefaultsToClose() {
        guard case .complete(let r, _) = parse("GET / HTTP/1.0\r\n\r\n") else { Issue.record("not complete"); return }
        #expect(!r.head.keepAlive)
        guard case .complete(let r2, _) = parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n") else { Issue.record("x"); return }
        #expect(r2.head.keepAlive)
        guard case .complete(let r3, _) = parse("GET / HTTP/1.1\r\nHost: x\r\nConnection: Close\r\n\r\n") else { Issue.record("x"); return }
        #expect(!r3.head.keepAlive)
    }

    @Test func contentLengthBody() {
        guard case .complete(let r, let n) = parse("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloEXTRA") else {
            Issue.record("not complete"); return
        }
        #expect(r.body == Array("hello".utf8))
        #expect(n == "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello".utf8.count)
    }

    @Test func chunkedBody() {
        let s = "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nT: 1\r\n\r\nNEXT"
        guard case .complete(let r, let n) = parse(s) else { Issue.record("not complete"); return }
        #expect(r.body == Array("hello world".utf8))
        #expect(n == s.utf8.count - 4)
    }

    @Test func expectContinueHeadIsVisibleBeforeBody() {
        var p = HTTPRequestParser()
        let s = Array("POST /a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n".utf8)
        let r = s.withUnsafeBytes { p.parse($0) }
        #expect(r == .incomplete)
        #expect(p.head?.expectContinue == true)
        let all = s + Array("abc".utf8)
        guard case .complete(let req, _) = all.withUnsafeBytes({ p.parse($0) }) else { Issue.record("x"); return }
        #expect(req.body == Array("abc".utf8))
    }

    @Test(arguments: [
        ("GET  / HTTP/1.1\r\nHost: x\r\n\r\n", HTTPParseError.malformedRequestLine),
        ("GET / HTTP/1.1 \r\n\r\n", .malformedRequestLine),
        ("G(T / HTTP/1.1\r\nHost: x\r\n\r\n", .malformedRequestLine),
        ("GET / HTTX/1.1\r\n\r\n", .malformedRequestLine),
        ("GET / HTTP/2.0\r\n\r\n", .unsupportedVersion),
        ("GET / HTTP/1.1\r\nHost: x\r\nBad Name: x\r\n\r\n", .malformedHeader),
        ("GET / HTTP/1.1\r\nHost: x\r\nName : x\r\n\r\n", .malformedHeader),
        ("GET / HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n", .malformedHeader),
        ("GET / HTTP/1.1\nHost: x\r\n\r\n", .malformedHeader),
        ("GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", .malformedHeader),
        ("GET / HTTP/1.1\r\nHost: x\r\nA: b\r\n folded\r\n\r\n", .obsoleteLineFolding),
        ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", .invalidContentLength),
        ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n", .invalidContentLength),
        ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", .conflictingContentLength),
        ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", .contentLengthWithTransferEncoding),
        ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", .unsupportedTransferEncoding),
        ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", .chunkedRequiresHTTP11),
        ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", .malformedChunk),
        ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX\r\n", .malformedChunk),
        ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n", .bodyTooLarge),
        ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n200000\r\n", .bodyTooLarge),
        ("POST / HTTP/1.1\r\nHost: x\r\nExpect: something\r\n\r\n", .unsupportedExpectation),
    ])
    func errors(input: String, expected: HTTPParseError) {
        let e = failure(input)
        #expect(e == expected, "\(input.debugDescription)")
        if let e { #expect((400..<500).contains(e.status) || e.status == 505) }
    }

    @Test func errorStatuses() {
        #expect(HTTPParseError.headersTooLarge.status == 431)
        #expect(HTTPParseError.bodyTooLarge.status == 413)
        #expect(HTTPParseError.unsupportedTransferEncoding.status == 411)
        #expect(HTTPParseError.malformedHeader.status == 400)
    }

    @Test func headersTooLarge() {
        let big = "GET / HTTP/1.1\r\nHost: x\r\nX: " + String(repeating: "a", count: 17000) + "\r\n\r\n"
        #expect(failure(big) == .headersTooLarge)
        // Also without the terminator yet (a client that never stops sending headers).
        let open = "GET / HTTP/1.1\r\nHost: x\r\nX: " + String(repeating: "a", count: 17000)
        #expect(failure(open) == .headersTooLarge)
        var many = "GET / HTTP/1.1\r\nHost: x\r\n"
        for i in 0..<200 { many += "H\(i): v\r\n" }
        #expect(failure(many + "\r\n") == .tooManyHeaders)
    }

    @Test func pipelined() {
        let all = parseAll("GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nokGET /c HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(all?.map(\.head.target) == ["/a", "/b", "/c"])
    }

    /// Up to two empty lines before a request line are ignored (RFC 9112 §2.2; some clients end a body with
    /// an extra CRLF) and counted as consumed, also between pipelined requests; a third is a malformed request
    /// line, so empty lines cannot pile up unanswered.
    @Test func leadingEmptyLinesAreIgnored() {
        let one = "\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n"
        guard case .complete(let r, let n) = parse(one) else { Issue.record("not complete"); return }
        #expect(n == one.utf8.count && r.head.path == "/health" && r.head.header("host") == "x")
        guard case .complete(_, let n2) = parse("\r\n" + one) else { Issue.record("two empty lines: not complete"); return }
        #expect(n2 == one.utf8.count + 2)
        #expect(failure("\r\n\r\n" + one) == .malformedRequestLine)
        #expect(parse("\r\n") == .incomplete)
        let all = parseAll("POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok\r\nPOST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n\r\nGET /d HTTP/1.1\r\nHost: x\r\n\r\n")
        let got = all?.map { $0.head.target + ":" + String(decoding: $0.body, as: UTF8.self) }
        #expect(got == ["/b:ok", "/c:hi", "/d:"])
    }

    /// Every request, fed one more byte at a time, is incomplete until its last byte and then equals the
    /// one-shot parse.
    @Test(arguments: [
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\nX: y\r\n\r\n{\"a\":\"b c\"}",
        "POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;e\r\nabc\r\n2\r\nde\r\n0\r\nTr: x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "\r\n\r\nPOST /y HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
    ])
    func splitAtEveryByte(input: String) {
        let bytes = Array(input.utf8)
        var whole = HTTPRequestParser()
        let expected = bytes.withUnsafeBytes { whole.parse($0) }
        guard case .complete = expected else { Issue.record("whole parse incomplete"); return }
        for cut in 1..<bytes.count {
            var p = HTTPRequestParser()
            var prefixResult: HTTPParseResult = .incomplete
            // Grow the window one byte at a time up to `cut`, then give the rest at once.
            for n in 1...cut { prefixResult = bytes[..<n].withUnsafeBytes { p.parse($0) } }
            #expect(prefixResult == .incomplete, "cut \(cut)")
            let r = bytes.withUnsafeBytes { p.parse($0) }
            #expect(r == expected, "cut \(cut)")
        }
    }
}

@Suite struct JSONTests {
    @Test func roundTrip() throws {
        let v = try JSON.parse(Array(#"{"a":[1,-2.5e3,true,false,null,"x\n\u00e9\ud83d\ude00"],"b":{}}"#.utf8))
        #expect(v["a"] == .array([.number(1, integer: 1), .number(-2500, integer: nil), .bool(true), .bool(false), .null, .string("x\né😀")]))
        var w = JSONWriter(); w.value(v)
        #expect(try JSON.parse(w.bytes) == v)
    }

    @Test(arguments: ["", "{", "[1,]", "{\"a\":1,}", "01", "1.", "\"\\x\"", "\"\u{01}\"", "{\"a\":1,\"a\":2}",
                      "\"\\ud800\"", "nul", "1 2", String(repeating: "[", count: 100) + String(repeating: "]", count: 100)])
    func rejects(_ s: String) {
        #expect(throws: JSONError.self) { try JSON.parse(Array(s.utf8)) }
    }
}
