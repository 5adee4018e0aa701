// HTTP/1.1 request parser: strict, incremental, Foundation-free (it is also compiled into the fuzz target).
//
// The connection keeps every unconsumed byte of its input contiguously, starting at the first byte of the
// current request. Each time bytes arrive it calls `parse(_:)` with that whole window; the parser remembers how
// far it has scanned (so a slow client costs O(n) overall, not O(n²)) and answers:
//   .incomplete           more bytes are needed (`head` is set once the header block is complete)
//   .complete(req, n)     one full request; its first n bytes of the window are consumed (pipelined bytes after
//                         it belong to the next request: the caller drops n bytes and calls `reset()`)
//   .failure(error)       the request is malformed or over a limit; the caller answers error.status and closes.
// The window must only ever grow between calls (the same prefix plus new bytes) until `reset()`.

/// Explicit limits; every one of them maps to a 4xx.
public struct HTTPLimits: Sendable, Equatable {
    /// Request line + headers + final CRLF (and, separately, a chunked body's trailers) → 431 above this.
    public var maxHeaderBytes: Int = 16 * 1024
    /// Decoded body size → 413 above this.
    public var maxBodyBytes: Int = 1 << 20
    /// Number of header fields → 431 above this.
    public var maxHeaderCount: Int = 128
    public init(maxHeaderBytes: Int = 16 * 1024, maxBodyBytes: Int = 1 << 20, maxHeaderCount: Int = 128) {
        self.maxHeaderBytes = maxHeaderBytes
        self.maxBodyBytes = maxBodyBytes
        self.maxHeaderCount = maxHeaderCount
    }
}

/// Why a request was refused. `status` is the HTTP status to answer with (always 4xx or 505).
public enum HTTPParseError: Error, Equatable, Sendable {
    case malformedRequestLine
    case unsupportedVersion
    case malformedHeader
    case obsoleteLineFolding
    case headersTooLarge
    case tooManyHeaders
    case invalidContentLength
    case conflictingContentLength
    case contentLengthWithTransferEncoding
    case unsupportedTransferEncoding
    case chunkedRequiresHTTP11
    case malformedChunk
    case bodyTooLarge
    case unsupportedExpectation
    /// An HTTP/1.1 request without a Host field, or any request with more than one (RFC 9112 §3.2: 400).
    case missingHost
    case duplicateHost

    public var status: Int {
        switch self {
        case .headersTooLarge, .tooManyHeaders: return 431
        case .bodyTooLarge: return 413
        case .unsupportedVersion: return 505
        case .unsupportedExpectation: return 417
        case .unsupportedTransferEncoding: return 411   // only `chunked` is understood: ask for a length
        default: return 400
        }
    }

    public var code: String {
        switch self {
        case .malformedRequestLine: return "malformed_request_line"
        case .unsupportedVersion: return "http_version_not_supported"
        case .malformedHeader: return "malformed_header"
        case .obsoleteLineFolding: return "obsolete_line_folding"
        case .headersTooLarge: return "headers_too_large"
        case .tooManyHeaders: return "too_many_headers"
        case .invalidContentLength: return "invalid_content_length"
        case .conflictingContentLength: return "conflicting_content_length"
        case .contentLengthWithTransferEncoding: return "content_length_with_transfer_encoding"
        case .unsupportedTransferEncoding: return "length_required"
        case .chunkedRequiresHTTP11: return "chunked_requires_http11"
        case .malformedChunk: return "malformed_chunk"
        case .bodyTooLarge: return "body_too_large"
        case .unsupportedExpectation: return "expectation_failed"
        case .missingHost: return "missing_host"
        case .duplicateHost: return "duplicate_host"
        }
    }

    public var message: String {
        switch self {
        case .malformedRequestLine: return "malformed HTTP request line"
        case .unsupportedVersion: return "only HTTP/1.0 and HTTP/1.1 are supported"
        case .malformedHeader: return "malformed HTTP header field"
        case .obsoleteLineFolding: return "obsolete header line folding is not accepted"
        case .headersTooLarge: return "request headers exceed the size limit"
        case .tooManyHeaders: return "too many request header fields"
        case .invalidContentLength: return "invalid Content-Length"
        case .conflictingContentLength: return "conflicting Content-Length headers"
        case .contentLengthWithTransferEncoding: return "both Content-Length and Transfer-Encoding are present"
        case .unsupportedTransferEncoding: return "unsupported Transfer-Encoding (only chunked); send Content-Length"
        case .chunkedRequiresHTTP11: return "chunked transfer coding requires HTTP/1.1"
        case .malformedChunk: return "malformed chunked body"
        case .bodyTooLarge: return "request body exceeds the size limit"
        case .unsupportedExpectation: return "unsupported Expect header (only 100-continue)"
        case .missingHost: return "HTTP/1.1 requests need a Host header"
        case .duplicateHost: return "more than one Host header"
        }
    }
}

public struct HTTPHeader: Sendable, Equatable {
    /// Lower-cased field name.
    public var name: String
    /// Field value with surrounding whitespace removed.
    public var value: String
}

public struct HTTPRequestHead: Sendable, Equatable {
    /// One buffer per head: the header block as received (request line through the empty line), then the
    /// field table, four Int32 per field line (name start and end, value start and end, offsets into the
    /// block; the value without surrounding whitespace). Nothing else is copied or allocated while parsing:
    /// names and values become Strings only when asked for.
    private let storage: [UInt8]
    private let blockLength: Int
    private let fieldCount: Int
    private let methodEnd: Int
    private let targetStart: Int
    private let targetEnd: Int
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    public var versionMinor: Int
    public var keepAlive: Bool
    public var expectContinue: Bool
    /// Declared Content-Length (0 when absent or chunked).
    public var contentLength: Int
    public var chunked: Bool

    fileprivate init(storage: [UInt8], blockLength: Int, fieldCount: Int, methodEnd: Int, targetStart: Int,
                     targetEnd: Int, versionMinor: Int, keepAlive: Bool, expectContinue: Bool, contentLength: Int,
                     chunked: Bool) {
        self.storage = storage; self.blockLength = blockLength; self.fieldCount = fieldCount
        self.methodEnd = methodEnd; self.targetStart = targetStart; self.targetEnd = targetEnd
        self.versionMinor = versionMinor; self.keepAlive = keepAlive; self.expectContinue = expectContinue
        self.contentLength = contentLength; self.chunked = chunked
    }

    /// The parser's empty slot (never handed out).
    static let placeholder = HTTPRequestHead(storage: [], blockLength: 0, fieldCount: 0, methodEnd: 0, targetStart: 0,
                                             targetEnd: 0, versionMinor: 1, keepAlive: false, expectContinue: false,
                                             contentLength: 0, chunked: false)

    public var method: String { string(0, methodEnd) }
    public var target: String { string(targetStart, targetEnd) }

    /// Whether the method is exactly `m` (methods are case-sensitive).
    public func methodIs(_ m: String) -> Bool {
        var m = m
        return m.withUTF8 { u in
            u.count == methodEnd && storage.withUnsafeBufferPointer { b in (0..<u.count).allSatisfy { b[$0] == u[$0] } }
        }
    }

    /// Every field line in order, names lower-cased.
    public var headers: [HTTPHeader] {
        (0..<fieldCount).map { k in
            let f = field(k)
            return HTTPHeader(name: storage.withUnsafeBytes { HTTPRequestParser.lowercasedString($0, f.0, f.1) },
                              value: string(f.2, f.3))
        }
    }

    /// First value of the header with this lower-case name (compared without case, byte by byte).
    public func header(_ lowercasedName: String) -> String? {
        var name = lowercasedName
        let k: Int? = name.withUTF8 { n in
            storage.withUnsafeBytes { b in
                for k in 0..<fieldCount {
                    let f = field(k)
                    if HTTPRequestParser.equalsLowercased(UnsafeRawBufferPointer(rebasing: b[f.0..<f.1]), UnsafeRawBufferPointer(n)) { return k }
                }
                return nil
            }
        }
        guard let k else { return nil }
        let f = field(k)
        return string(f.2, f.3)
    }

    /// Path without the query string.
    public var path: Substring { withPath { String(decoding: $0, as: UTF8.self)[...] } }

    /// The path's bytes (without the query string), without building a String. An absolute-form target
    /// (`http://host/path`, which a server must accept: RFC 9112 §3.2.2) gives its path.
    public func withPath<R>(_ body: (UnsafeBufferPointer<UInt8>) -> R) -> R {
        storage.withUnsafeBufferPointer { b in
            var s = targetStart
            if b[s] != UInt8(ascii: "/") {
                // scheme "://" authority: the path starts at the next "/" ("?" or the end: an empty path).
                var k = s
                while k < targetEnd && b[k] != UInt8(ascii: ":") && b[k] != UInt8(ascii: "/") { k += 1 }
                if k + 2 < targetEnd && b[k] == UInt8(ascii: ":") && b[k + 1] == UInt8(ascii: "/") && b[k + 2] == UInt8(ascii: "/") {
                    k += 3
                    while k < targetEnd && b[k] != UInt8(ascii: "/") && b[k] != UInt8(ascii: "?") { k += 1 }
                    s = k
                }
            }
            var e = s
            while e < targetEnd && b[e] != UInt8(ascii: "?") { e += 1 }
            return body(UnsafeBufferPointer(rebasing: b[s..<e]))
        }
    }

    /// Field k's (name start, name end, value start, value end).
    private func field(_ k: Int) -> (Int, Int, Int, Int) {
        storage.withUnsafeBytes { r in
            let o = blockLength + 16 * k
            return (Int(r.loadUnaligned(fromByteOffset: o, as: Int32.self)),
                    Int(r.loadUnaligned(fromByteOffset: o + 4, as: Int32.self)),
                    Int(r.loadUnaligned(fromByteOffset: o + 8, as: Int32.self)),
                    Int(r.loadUnaligned(fromByteOffset: o + 12, as: Int32.self)))
        }
    }

    private func string(_ s: Int, _ e: Int) -> String {
        storage.withUnsafeBytes { HTTPRequestParser.string($0, s, e) }
    }
}

public struct HTTPRequest: Sendable, Equatable {
    public var head: HTTPRequestHead
    public var body: [UInt8]
}

public enum HTTPParseResult: Equatable, Sendable {
    case incomplete
    case complete(HTTPRequest, consumed: Int)
    case failure(HTTPParseError)
}

public struct HTTPRequestParser: Sendable {
    public let limits: HTTPLimits
    /// Set once the header block has been parsed (lets the caller answer `Expect: 100-continue`).
    public var head: HTTPRequestHead? { hasHead ? parsedHead : nil }
    /// The head and whether it is set, kept apart: assigning or clearing an `HTTPRequestHead?` went through
    /// the unspecialised Optional value witness (~150 instructions, twice per request; callgrind).
    private var parsedHead = HTTPRequestHead.placeholder
    private var hasHead = false

    /// Offset where the search for the end of the header block resumes.
    private var scanned = 0
    /// Offset of the first body byte (valid once head != nil).
    private var bodyStart = 0
    // Chunked decoding state: `pos` is the next undecoded byte of the window.
    private enum ChunkState: Sendable { case size, data(remaining: Int), dataEnd, trailers }
    private var chunkState = ChunkState.size
    private var pos = 0
    private var trailerBytes = 0
    private var body: [UInt8] = []
    /// Empty lines (CRLF) before the request line, skipped (RFC 9112 §2.2: a server SHOULD ignore at least
    /// one; some clients send one after a body). Every offset above is relative to the bytes after them.
    private var leading = 0
    static let maxLeadingEmptyLines = 2

    public init(limits: HTTPLimits = HTTPLimits()) { self.limits = limits }

    public mutating func reset() {
        hasHead = false
        scanned = 0
        bodyStart = 0
        chunkState = .size
        pos = 0
        trailerBytes = 0
        body = []
        leading = 0
    }

    public mutating func parse(_ buf: UnsafeRawBufferPointer) -> HTTPParseResult {
        if !hasHead {
            // Up to maxLeadingEmptyLines; more fail as a malformed request line, so they cannot pile up.
            var skip = 0
            while skip < 2 * Self.maxLeadingEmptyLines && skip + 1 < buf.count && buf[skip] == 13 && buf[skip + 1] == 10 {
                skip += 2
            }
            leading = skip
            // A lone CR may yet become an empty line.
            if skip < 2 * Self.maxLeadingEmptyLines && buf.count == skip + 1 && buf[skip] == 13 { return .incomplete }
        }
        if leading == 0 { return parseRequest(buf) }
        let r = parseRequest(UnsafeRawBufferPointer(rebasing: buf[leading...]))
        if case .complete(let req, let consumed) = r { return .complete(req, consumed: consumed + leading) }
        return r
    }

    private mutating func parseRequest(_ buf: UnsafeRawBufferPointer) -> HTTPParseResult {
        if !hasHead {
            // Find CRLF CRLF. Bytes before `scanned` held no terminator; back up 3 bytes to catch a split one.
            let n = buf.count
            var i = max(0, scanned - 3)
            var end = -1
            while true {
                i = Self.nextLineBreak(buf, from: i, end: n)
                if i + 3 >= n { break }   // (one in the last 3 bytes is looked at again with more bytes)
                let c = buf[i]
                if c == 13 {
                    if buf[i + 1] != 10 { return .failure(.malformedHeader) }   // bare CR
                    if buf[i + 2] == 13 && buf[i + 3] == 10 { end = i + 4; break }
                } else if c == 10 && (i == 0 || buf[i - 1] != 13) {
                    return .failure(.malformedHeader)                          // bare LF
                }
                i += 1
            }
            if end < 0 {
                scanned = n
                if n > limits.maxHeaderBytes { return .failure(.headersTooLarge) }
                // A request line that can never become valid fails early (e.g. binary garbage).
                if let e = Self.earlyCheck(buf) { return .failure(e) }
                return .incomplete
            }
            if end > limits.maxHeaderBytes { return .failure(.headersTooLarge) }
            switch Self.parseHead(UnsafeRawBufferPointer(rebasing: buf[0..<end]), limits: limits) {
            case .failure(let e): return .failure(e)
            case .success(let h):
                parsedHead = h
                hasHead = true
                bodyStart = end
                pos = end
            }
        }
        guard hasHead else { return .incomplete }
        let h = parsedHead
        if h.chunked { return parseChunked(buf, head: h) }
        let total = bodyStart + h.contentLength
        if buf.count < total { return .incomplete }
        let bodyBytes = Array(UnsafeRawBufferPointer(rebasing: buf[bodyStart..<total]))
        return .complete(HTTPRequest(head: h, body: bodyBytes), consumed: total)
    }

    // MARK: chunked bodies

    private mutating func parseChunked(_ buf: UnsafeRawBufferPointer, head h: HTTPRequestHead) -> HTTPParseResult {
        let n = buf.count
        while true {
            switch chunkState {
            case .size:
                // chunk-size [ ; ext ] CRLF; the line is bounded so a client cannot stream an endless one.
                let lineEnd: Int
                switch Self.lineEnd(buf, from: pos, limit: 1024) {
                case .found(let e): lineEnd = e
                case .invalid: return .failure(.malformedChunk)
                case .notYet:
                    if n - pos > 1024 { return .failure(.malformedChunk) }
                    return .incomplete
                }
                var size = 0
                var i = pos
                var digits = 0
                while i < lineEnd, let d = Self.hexValue(buf[i]) {
                    size = size * 16 + d
                    digits += 1
                    if digits > 8 { return .failure(.bodyTooLarge) }
                    i += 1
                }
                if digits == 0 { return .failure(.malformedChunk) }
                if i < lineEnd {
                    // Only chunk extensions may follow: BWS ";" ...; their content is ignored but must be visible.
                    while i < lineEnd && (buf[i] == 32 || buf[i] == 9) { i += 1 }
                    if i >= lineEnd || buf[i] != 59 { return .failure(.malformedChunk) }
                    for j in i..<lineEnd where !Self.isFieldValueByte(buf[j]) { return .failure(.malformedChunk) }
                }
                pos = lineEnd + 2
                if size == 0 {
                    chunkState = .trailers
                } else {
                    if body.count + size > limits.maxBodyBytes { return .failure(.bodyTooLarge) }
                    chunkState = .data(remaining: size)
                }
            case .data(let remaining):
                let avail = min(remaining, n - pos)
                if avail > 0 {
                    body.append(contentsOf: UnsafeRawBufferPointer(rebasing: buf[pos..<(pos + avail)]))
                    pos += avail
                }
                if avail < remaining {
                    chunkState = .data(remaining: remaining - avail)
                    return .incomplete
                }
                chunkState = .dataEnd
            case .dataEnd:
                if n - pos < 2 { return .incomplete }
                if buf[pos] != 13 || buf[pos + 1] != 10 { return .failure(.malformedChunk) }
                pos += 2
                chunkState = .size
            case .trailers:
                // Trailer fields until an empty line; they are validated and dropped.
                let lineEnd: Int
                switch Self.lineEnd(buf, from: pos, limit: limits.maxHeaderBytes) {
                case .found(let e): lineEnd = e
                case .invalid: return .failure(.malformedChunk)
                case .notYet:
                    if n - pos + trailerBytes > limits.maxHeaderBytes { return .failure(.headersTooLarge) }
                    return .incomplete
                }
                trailerBytes += lineEnd + 2 - pos
                if trailerBytes > limits.maxHeaderBytes { return .failure(.headersTooLarge) }
                if lineEnd == pos {
                    let consumed = pos + 2
                    let req = HTTPRequest(head: h, body: body)
                    return .complete(req, consumed: consumed)
                }
                if Self.fieldLine(UnsafeRawBufferPointer(rebasing: buf[pos..<lineEnd])) == nil {
                    return .failure(.malformedHeader)
                }
                pos = lineEnd + 2
            }
        }
    }

    // MARK: header block

    private enum HeadResult { case success(HTTPRequestHead), failure(HTTPParseError) }

    /// Parses a complete header block (ending with CRLF CRLF).
    private static func parseHead(_ b: UnsafeRawBufferPointer, limits: HTTPLimits) -> HeadResult {
        guard let lineEnd = findCRLF(b, from: 0, limit: b.count) else { return .failure(.malformedRequestLine) }
        // request-line = method SP request-target SP HTTP-version
        var i = 0
        while i < lineEnd && isTokenByte(b[i]) { i += 1 }
        if i == 0 || i >= lineEnd || b[i] != 32 { return .failure(.malformedRequestLine) }
        let methodEnd = i
        i += 1
        let targetStart = i
        while i < lineEnd && b[i] > 32 && b[i] < 127 { i += 1 }
        if i == targetStart || i >= lineEnd || b[i] != 32 { return .failure(.malformedRequestLine) }
        let targetEnd = i
        i += 1
        // "HTTP/" DIGIT "." DIGIT
        if lineEnd - i != 8 { return .failure(.malformedRequestLine) }
        let httpSlash: [UInt8] = [72, 84, 84, 80, 47]
        for k in 0..<5 where b[i + k] != httpSlash[k] { return .failure(.malformedRequestLine) }
        let major = b[i + 5], dot = b[i + 6], minor = b[i + 7]
        guard isDigit(major), dot == 46, isDigit(minor) else { return .failure(.malformedRequestLine) }
        if major != 49 || (minor != 48 && minor != 49) { return .failure(.unsupportedVersion) }
        let versionMinor = Int(minor - 48)

        // The block, then the field table (16 bytes per field), in one buffer.
        var storage: [UInt8] = []
        storage.reserveCapacity(b.count + 16 * 12)
        storage.append(contentsOf: b)
        var fieldCount = 0
        var keepAlive = versionMinor == 1
        var expectContinue = false
        var contentLength: Int? = nil
        var chunked = false
        var sawTransferEncoding = false
        var sawClose = false
        var hostFields = 0
        var p = lineEnd + 2
        let end = b.count - 2   // the final empty line
        while p < end {
            guard let le = findCRLF(b, from: p, limit: b.count) else { return .failure(.malformedHeader) }
            if b[p] == 32 || b[p] == 9 { return .failure(.obsoleteLineFolding) }
            guard let f = fieldLine(UnsafeRawBufferPointer(rebasing: b[p..<le])) else { return .failure(.malformedHeader) }
            let n = p + f.nameEnd, vs = p + f.valueStart, ve = p + f.valueEnd
            fieldCount += 1
            if fieldCount > limits.maxHeaderCount { return .failure(.tooManyHeaders) }
            let nameStart = p
            p = le + 2
            withUnsafeBytes(of: (Int32(nameStart).littleEndian, Int32(n).littleEndian, Int32(vs).littleEndian,
                                 Int32(ve).littleEndian)) { storage.append(contentsOf: $0) }

            // The fields the parser acts on, picked by the name's length first (most fields are none of them).
            let name = UnsafeRawBufferPointer(rebasing: b[nameStart..<n])
            let value = UnsafeRawBufferPointer(rebasing: b[vs..<ve])
            switch name.count {
            case 14 where equalsLowercased(name, "content-length"):
                guard let v = parseContentLength(value) else { return .failure(.invalidContentLength) }
                if let prev = contentLength, prev != v { return .failure(.conflictingContentLength) }
                contentLength = v
            case 17 where equalsLowercased(name, "transfer-encoding"):
                if sawTransferEncoding { return .failure(.unsupportedTransferEncoding) }
                sawTransferEncoding = true
                if !equalsLowercased(value, "chunked") { return .failure(.unsupportedTransferEncoding) }
                chunked = true
            case 10 where equalsLowercased(name, "connection"):
                // Comma-separated tokens, each trimmed of spaces and tabs, compared without case.
                var t = 0
                while t <= value.count {
                    var e = t
                    while e < value.count && value[e] != 44 { e += 1 }
                    var ts = t, te = e
                    while ts < te && (value[ts] == 32 || value[ts] == 9) { ts += 1 }
                    while te > ts && (value[te - 1] == 32 || value[te - 1] == 9) { te -= 1 }
                    let token = UnsafeRawBufferPointer(rebasing: value[ts..<te])
                    // "close" wins wherever it stands (RFC 9112 §9.6): the client will not send another request.
                    if equalsLowercased(token, "close") { keepAlive = false; sawClose = true }
                    else if equalsLowercased(token, "keep-alive") && !sawClose { keepAlive = true }
                    t = e + 1
                }
            case 4 where equalsLowercased(name, "host"):
                hostFields += 1
                if hostFields > 1 { return .failure(.duplicateHost) }
            case 6 where equalsLowercased(name, "expect"):
                if !equalsLowercased(value, "100-continue") { return .failure(.unsupportedExpectation) }
                // HTTP/1.0 clients do not know 100 Continue (RFC 9110 §10.1.1): ignore it for them.
                expectContinue = versionMinor == 1
            default:
                break
            }
        }
        if chunked && contentLength != nil { return .failure(.contentLengthWithTransferEncoding) }
        if chunked && versionMinor == 0 { return .failure(.chunkedRequiresHTTP11) }
        let length = contentLength ?? 0
        if length > limits.maxBodyBytes { return .failure(.bodyTooLarge) }
        // Over a Unix socket the name means little, but clients send one (curl: "localhost") and a request
        // without it is malformed HTTP/1.1 whatever the transport; HTTP/1.0 has no such rule.
        // Checked last, so a more specific error wins.
        if hostFields == 0 && versionMinor == 1 { return .failure(.missingHost) }
        if length == 0 && !chunked { expectContinue = false }
        return .success(HTTPRequestHead(
            storage: storage, blockLength: b.count, fieldCount: fieldCount, methodEnd: methodEnd,
            targetStart: targetStart, targetEnd: targetEnd, versionMinor: versionMinor, keepAlive: keepAlive,
            expectContinue: expectContinue, contentLength: length, chunked: chunked))
    }

    /// Whether `b`, its ASCII letters lower-cased, equals `lower` (already lower case; lengths compared first).
    static func equalsLowercased(_ b: UnsafeRawBufferPointer, _ lower: UnsafeRawBufferPointer) -> Bool {
        guard b.count == lower.count else { return false }
        for k in 0..<b.count {
            let c = b[k]
            if (c >= 65 && c <= 90 ? c + 32 : c) != lower[k] { return false }
        }
        return true
    }

    static func equalsLowercased(_ b: UnsafeRawBufferPointer, _ lower: StaticString) -> Bool {
        equalsLowercased(b, UnsafeRawBufferPointer(start: lower.utf8Start, count: lower.utf8CodeUnitCount))
    }


    /// field-line = field-name ":" OWS field-value OWS (no whitespace before the colon): the name's end and the
    /// value's bounds without surrounding spaces and tabs (offsets in `b`), or nil when the line is malformed.
    private static func fieldLine(_ b: UnsafeRawBufferPointer) -> (nameEnd: Int, valueStart: Int, valueEnd: Int)? {
        var n = 0
        while n < b.count && isTokenByte(b[n]) { n += 1 }
        if n == 0 || n >= b.count || b[n] != 58 { return nil }
        var vs = n + 1, ve = b.count
        while vs < ve && (b[vs] == 32 || b[vs] == 9) { vs += 1 }
        while ve > vs && (b[ve - 1] == 32 || b[ve - 1] == 9) { ve -= 1 }
        for k in vs..<ve where !isFieldValueByte(b[k]) { return nil }
        return (n, vs, ve)
    }

    /// 1*DIGIT, at most 15 digits (far above any limit, far below overflow).
    private static func parseContentLength(_ u: UnsafeRawBufferPointer) -> Int? {
        if u.isEmpty || u.count > 15 { return nil }
        var v = 0
        for c in u {
            guard isDigit(c) else { return nil }
            v = v * 10 + Int(c - 48)
        }
        return v
    }

    /// Rejects a window whose request line is already invalid before the header block is complete.
    private static func earlyCheck(_ b: UnsafeRawBufferPointer) -> HTTPParseError? {
        var i = 0
        while i < b.count && isTokenByte(b[i]) { i += 1 }
        if i < b.count && (b[i] != 32 || i == 0) { return .malformedRequestLine }
        return nil
    }

    enum LineEnd { case found(Int), notYet, invalid }

    /// The offset of the next CRLF at or after `from`, scanning at most limit + 2 bytes.
    /// A bare CR or LF makes the line invalid (strict: only CRLF ends a line).
    static func lineEnd(_ b: UnsafeRawBufferPointer, from: Int, limit: Int) -> LineEnd {
        let end = min(b.count, from + limit + 2)
        let i = nextLineBreak(b, from: from, end: end)
        if i >= end { return .notYet }
        if b[i] == 10 { return .invalid }
        if i + 1 >= b.count { return .notYet }
        return b[i + 1] == 10 ? .found(i) : .invalid
    }

    /// The index of the first CR or LF in b[from..<end], or `end` if there is none. Most header bytes are
    /// neither, so it goes eight bytes at a time.
    @inline(__always) static func nextLineBreak(_ b: UnsafeRawBufferPointer, from: Int, end: Int) -> Int {
        var i = from
        while i + 8 <= end {
            let m = lineBreakMask(UInt64(littleEndian: b.loadUnaligned(fromByteOffset: i, as: UInt64.self)))
            if m != 0 { return i + m.trailingZeroBitCount >> 3 }
            i += 8
        }
        while i < end && b[i] != 10 && b[i] != 13 { i += 1 }
        return i
    }

    static func findCRLF(_ b: UnsafeRawBufferPointer, from: Int, limit: Int) -> Int? {
        if case .found(let i) = lineEnd(b, from: from, limit: limit) { return i }
        return nil
    }

    /// A mask whose lowest set bit is the high bit of the first CR or LF byte of `w` (little-endian byte
    /// order), 0 if it has none. The classic "has a zero byte" test on w ^ CR and w ^ LF: a borrow can only
    /// flag bytes after a real match, so the lowest flag is exact.
    @inline(__always) static func lineBreakMask(_ w: UInt64) -> UInt64 {
        let ones: UInt64 = 0x0101_0101_0101_0101, highs: UInt64 = 0x8080_8080_8080_8080
        let cr = w ^ (ones &* 13), lf = w ^ (ones &* 10)
        return ((cr &- ones) & ~cr | (lf &- ones) & ~lf) & highs
    }

    static func isDigit(_ c: UInt8) -> Bool { c >= 48 && c <= 57 }

    static func hexValue(_ c: UInt8) -> Int? {
        switch c {
        case 48...57: return Int(c - 48)
        case 65...70: return Int(c - 55)
        case 97...102: return Int(c - 87)
        default: return nil
        }
    }

    /// tchar (RFC 9110 §5.6.2).
    static func isTokenByte(_ c: UInt8) -> Bool {
        switch c {
        case 48...57, 65...90, 97...122: return true
        case 33, 35, 36, 37, 38, 39, 42, 43, 45, 46, 94, 95, 96, 124, 126: return true
        default: return false
        }
    }

    /// VCHAR, SP, HTAB or obs-text.
    static func isFieldValueByte(_ c: UInt8) -> Bool { c == 9 || (c >= 32 && c != 127) }

    static func string(_ b: UnsafeRawBufferPointer, _ s: Int, _ e: Int) -> String {
        String(decoding: UnsafeRawBufferPointer(rebasing: b[s..<e]), as: UTF8.self)
    }

    /// Bytes s..<e as a String with ASCII letters lower-cased, in one pass (header names are tokens: ASCII).
    static func lowercasedString(_ b: UnsafeRawBufferPointer, _ s: Int, _ e: Int) -> String {
        String(unsafeUninitializedCapacity: e - s) { out in
            for k in s..<e { let c = b[k]; out[k - s] = c >= 65 && c <= 90 ? c + 32 : c }
            return e - s
        }
    }
}

extension String {
    /// Whether both have the same UTF-8 length (O(1)). Checked before `==` where most candidates differ: a
    /// `String ==` that fails goes through the library's out-of-line Unicode comparison. (Strings of other
    /// UTF-8 lengths can still be canonically equivalent; the callers compare protocol tokens and JSON keys,
    /// which are matched by their code points.)
    @inline(__always) func sameUTF8Length(as other: String) -> Bool { utf8.count == other.utf8.count }
}
