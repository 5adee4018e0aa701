import Testing
import Wire

/// One sample of every record type, with awkward values (empty strings, multi-byte UTF-8, extremes).
let samples: [Record] = [
    .submit(SubmitRecord(requestID: 42, kind: .chat, sessionKey: "sess-✓",
                         sampling: WireSampling(temperature: 0.7, topP: 0.9, minP: 0.05, topK: 40, maxTokens: 128,
                                                seed: 7, stop: ["\n\n", "</s>"]),
                         messages: [WireMessage(role: "system", content: ""),
                                    WireMessage(role: "user", content: "héllo 😀")])),
    .submit(SubmitRecord(requestID: .max, kind: .completion, sessionKey: "", sampling: WireSampling(seed: nil),
                         prompt: "Once upon a time")),
    .submit(SubmitRecord(requestID: 8, kind: .completion, sessionKey: "", sampling: WireSampling(logprobs: 0),
                         prompt: "p")),
    .submit(SubmitRecord(requestID: 12, kind: .completion, sessionKey: "s", sampling: WireSampling(),
                         promptTokens: [0, 504, -1, Int32.max])),
    .submit(SubmitRecord(requestID: 13, kind: .completion, sessionKey: "", sampling: {
        var s = WireSampling()
        s.presencePenalty = -2; s.frequencyPenalty = 0.5
        s.logitBias = [WireLogitBias(token: 7042, bias: -100), WireLogitBias(token: 0, bias: 3.5)]
        s.jsonObject = true
        s.jsonSchema = [1, 0, 0, 0, 0xFF, 0]
        return s
    }(), prompt: "p")),
    .submit(SubmitRecord(requestID: 9, kind: .completion, sessionKey: "", sampling: WireSampling(logprobs: 20),
                         prompt: "p")),
    .logprobs(LogprobsRecord(requestID: 10, entries: [
        LogprobEntry(sampled: WireTokenLogprob(token: 5, bytes: [0xE2, 0x80], logprob: -0.25),
                     top: [WireTokenLogprob(token: 5, bytes: [0xE2, 0x80], logprob: -0.25),
                           WireTokenLogprob(token: 0, bytes: [], logprob: -.infinity)]),
        LogprobEntry(sampled: WireTokenLogprob(token: -1, bytes: Array("héllo".utf8), logprob: 0), top: []),
    ])),
    .logprobs(LogprobsRecord(requestID: 11, entries: [])),
    .cancel(CancelRecord(requestID: 9)),
    .tokenize(TokenizeRecord(requestID: 1, addSpecial: true, parseSpecial: false, content: "<|im_start|>")),
    .detokenize(TokensRecord(requestID: 2, tokens: [0, 1, -1, Int32.max])),
    .delta(DeltaRecord(requestID: 3, completionTokens: 5, text: "日本")),
    .done(DoneRecord(requestID: 4, finish: .length, promptTokens: 10, completionTokens: 20, cachedTokens: 8,
                     firstTokenNanos: 123, totalNanos: 456)),
    .error(ErrorRecord(requestID: 5, code: .overloaded, message: "busy")),
    .error(ErrorRecord(requestID: 6, code: .contextLengthExceeded, message: "too long")),
    .tokens(TokensRecord(requestID: 6, tokens: [])),
    .text(TextRecord(requestID: 7, text: "")),
    .ready(ReadyRecord(workerID: 3, pid: 1234, numaNode: 0, contextLength: 8192, modelName: "smollm2",
                       cpus: [0, 1])),
]

@Test(arguments: samples)
func roundTrip(_ record: Record) throws {
    let bytes = try record.encoded()
    let back = try Record.decode(type: record.type.rawValue, bytes: bytes)
    #expect(back == record)
}

@Test(arguments: samples)
func everyTruncationIsAnError(_ record: Record) throws {
    let bytes = try record.encoded()
    for n in 0..<bytes.count {
        #expect(throws: WireError.self) { try Record.decode(type: record.type.rawValue, bytes: Array(bytes[0..<n])) }
    }
    // One extra byte is refused too: a record must be consumed exactly.
    #expect(throws: WireError.trailingBytes(1)) {
        try Record.decode(type: record.type.rawValue, bytes: bytes + [0])
    }
}

@Test func unknownTypeAndBadEnumsAreRejected() throws {
    #expect(throws: WireError.unknownType(999)) { try Record.decode(type: 999, bytes: []) }
    var done = try Record.done(DoneRecord(requestID: 1, finish: .stop, promptTokens: 0, completionTokens: 0,
                                          cachedTokens: 0)).encoded()
    done[8] = 77 // finish reason
    #expect(throws: WireError.invalidValue(field: "finish_reason", value: 77)) {
        try Record.decode(type: RecordType.done.rawValue, bytes: done)
    }
}

/// Error codes: an unknown raw value reads as an internal error; the refusals (no done record follows them)
/// are the codes a worker sends for requests it never admitted.
@Test func errorCodesAndRefusals() {
    #expect(WireErrorCode(raw: 1400) == .contextLengthExceeded && WireErrorCode(raw: 7) == .internalError)
    #expect(WireErrorCode.invalidRequest.isRefusal && WireErrorCode.contextLengthExceeded.isRefusal && WireErrorCode.overloaded.isRefusal)
    #expect(!WireErrorCode.internalError.isRefusal)
}

@Test func absurdLengthsAreRejectedWithoutReading() throws {
    // A tokens record claiming 2^20 ids but carrying none.
    var bytes = try Record.tokens(TokensRecord(requestID: 1, tokens: [])).encoded()
    bytes[8] = 0; bytes[9] = 0; bytes[10] = 0x10; bytes[11] = 0
    #expect(throws: WireError.self) { try Record.decode(type: RecordType.tokens.rawValue, bytes: bytes) }
    // Over the limit.
    bytes[11] = 0x7f
    #expect(throws: WireError.self) { try Record.decode(type: RecordType.tokens.rawValue, bytes: bytes) }
}

@Test func invalidUTF8IsRejected() throws {
    var bytes = try Record.text(TextRecord(requestID: 1, text: "ab")).encoded()
    bytes[bytes.count - 1] = 0xff
    #expect(throws: WireError.invalidUTF8(field: "text")) {
        try Record.decode(type: RecordType.text.rawValue, bytes: bytes)
    }
}

@Test func encoderEnforcesLimits() {
    let long = String(repeating: "x", count: WireLimits.maxStopLength + 1)
    let rec = Record.submit(SubmitRecord(requestID: 1, kind: .completion, sessionKey: "",
                                         sampling: WireSampling(stop: [long]), prompt: "p"))
    #expect(throws: WireError.self) { try rec.encoded() }
}

@Test func randomBytesNeverCrash() {
    var rng = SplitMix(seed: 1)
    for _ in 0..<20_000 {
        let n = Int(rng.next() % 64)
        let bytes = (0..<n).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        let type = RecordType.allCases[Int(rng.next() % UInt64(RecordType.allCases.count))].rawValue
        _ = try? Record.decode(type: type, bytes: bytes)
    }
}

struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

@Suite struct UTF8TextTests {
    /// The ASCII fast path and the validating path agree with String(validating:) on every length around
    /// the 8-byte steps, with the non-ASCII or invalid byte at every position.
    @Test func agreesWithStringValidating() {
        let samples: [[UInt8]] = [Array("é".utf8), Array("€".utf8), Array("😀".utf8), [0xC3], [0xFF], [0xED, 0xA0, 0x80]]
        for n in 0...19 {
            let ascii = (0..<n).map { UInt8(97 + $0 % 26) }
            #expect(ascii.withUnsafeBytes { UTF8Text.string($0) } == String(decoding: ascii, as: UTF8.self))
            for s in samples {
                for at in 0...n {
                    var bytes = ascii
                    bytes.insert(contentsOf: s, at: at)
                    let got = bytes.withUnsafeBytes { UTF8Text.string($0) }
                    #expect(got == String(validating: bytes, as: UTF8.self), "\(bytes)")
                }
            }
        }
    }
}

/// The writer stores fields in place in a reused buffer: one writer encoding records of growing and
/// shrinking size (past its initial buffer) must produce exactly what a fresh writer produces, and the
/// fixed-width fields are little-endian at their offsets.
@Test func reusedWriterMatchesFreshEncodingAndLayout() throws {
    var w = WireWriter(capacity: 16)
    let big = String(repeating: "é✓x", count: 30_000)   // ~180 KB: grows the buffer several times
    let records: [Record] = samples + [
        .delta(DeltaRecord(requestID: 77, completionTokens: 1, text: big)),
        .cancel(CancelRecord(requestID: 1)),
        .text(TextRecord(requestID: 78, text: String(big.prefix(1000)))),
    ]
    for r in records + records.reversed() {
        w.reset()
        try r.encode(into: &w)
        #expect(w.bytes == (try r.encoded()))
        #expect(w.count == w.bytes.count)
        let back = try w.withBytes { try Record.decode(type: r.type.rawValue, payload: $0) }
        #expect(back == r)
    }
    w.reset()
    try Record.delta(DeltaRecord(requestID: 0x0102_0304_0506_0708, completionTokens: 0x0A0B_0C0D, text: "hi")).encode(into: &w)
    #expect(w.bytes == [8, 7, 6, 5, 4, 3, 2, 1, 0x0D, 0x0C, 0x0B, 0x0A, 2, 0, 0, 0, 104, 105])
}

/// The alternatives asked for travel in one byte (0 = none, n + 1): beyond OpenAI's 20 is refused on both sides.
@Test func logprobsCountIsBoundedOnBothSides() throws {
    let over = Record.submit(SubmitRecord(requestID: 1, kind: .completion, sessionKey: "",
                                          sampling: WireSampling(logprobs: 21), prompt: "p"))
    #expect(throws: WireError.self) { try over.encoded() }
    var bytes = try Record.submit(SubmitRecord(requestID: 1, kind: .completion, sessionKey: "",
                                               sampling: WireSampling(logprobs: 20), prompt: "p")).encoded()
    // The byte after the stop list (request id 8, kind 1, session length 4, sampling 4+4+4+4+4, seed 1+8, stop count 4).
    let at = 8 + 1 + 4 + 20 + 9 + 4
    #expect(bytes[at] == 21)
    bytes[at] = 22
    #expect(throws: WireError.invalidValue(field: "logprobs", value: 22)) {
        try Record.decode(type: RecordType.submit.rawValue, bytes: bytes)
    }
    let many = Record.logprobs(LogprobsRecord(requestID: 1, entries: [LogprobEntry(
        sampled: WireTokenLogprob(token: 1, bytes: [], logprob: 0),
        top: Array(repeating: WireTokenLogprob(token: 1, bytes: [], logprob: 0), count: WireLimits.maxTopLogprobs + 1))]))
    #expect(throws: WireError.self) { try many.encoded() }
}
