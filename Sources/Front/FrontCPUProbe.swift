// The front's own CPU per request, without I/O: the pieces the event loop runs for one small non-streaming
// completion (parse the request, decode its JSON, build the response) and the record coding of one request
// on both sides of the rings (submit; delta and done back), each timed over many iterations on one thread.
// Socket round trips on a shared VM swing by microseconds from minute to minute; these numbers do not, so
// `switchyard-bench front` reports them beside the round trips to track the request path's cost.
import Glibc
import Wire

public enum FrontCPUProbe {
    public struct Result: Sendable {
        /// Nanoseconds per iteration of each piece.
        public var parseNs: Double
        public var decodeNs: Double
        public var responseNs: Double
        public var healthNs: Double
        /// One streamed delta of a chat completion: its SSE event and HTTP chunk (what the loop sends per token).
        public var streamDeltaNs: Double
        /// Encode + decode of the request's three records (submit to the worker, delta and done back).
        public var recordsNs: Double
    }

    /// Times `iterations` of each piece for `request` (an HTTP/1.1 POST /v1/completions with a body).
    public static func run(request: [UInt8], iterations: Int) throws -> Result {
        var parser = HTTPRequestParser()
        var parsed: HTTPRequest? = nil
        var sink = 0
        let parse = time(iterations) {
            parser.reset()
            if case .complete(let r, let consumed) = request.withUnsafeBytes({ parser.parse($0) }) { parsed = r; sink &+= consumed }
        }
        guard let req = parsed else { throw ProbeError(message: "the probe request does not parse") }
        var failed = false
        let decode = time(iterations) {
            do {
                let api = try APIDecoder.decodeGeneration(kind: .completions, body: req.body, id: 1,
                                                          sessionHeader: req.head.header("x-session-id"), peer: .unknown)
                sink &+= api.prompt.utf8.count
            } catch { failed = true }
        }
        if failed { throw ProbeError(message: "the probe request does not decode") }
        // What the loop builds for the final event of a non-streaming completion (identity at admission,
        // body and head at the end), into a reused buffer as FrontServer does.
        var out = ByteWriter(capacity: 1024)
        var bodyWriter = JSONWriter(capacity: 1024)
        var n = 0
        let health = Array("{\"status\":\"ok\"}".utf8)
        let response = time(iterations) {
            n += 1
            let ident = CompletionIdentity(number: UInt64(n), created: 1_800_000_000, model: "echo", chat: false)
            bodyWriter.reset()
            OpenAIEncoder.completion(ident, text: "h", finish: .length,
                                     usage: Usage(promptTokens: 1, completionTokens: 1, cachedTokens: 0), into: &bodyWriter)
            out.reset()
            bodyWriter.withBytes {
                ResponseWriter.full(&out, status: 200, contentType: "application/json", body: $0, keepAlive: true, worker: 0)
            }
            sink &+= out.count
        }
        let healthNs = time(iterations) {
            out.reset()
            ResponseWriter.full(&out, status: 200, contentType: "application/json", body: health, keepAlive: true, worker: nil)
            sink &+= out.count
        }
        let chat = CompletionIdentity(number: 7, created: 1_800_000_000, model: "echo", chat: true)
        let streamDelta = time(iterations) {
            bodyWriter.reset()
            OpenAIEncoder.streamChunk(chat, text: " word", role: false, finish: nil, into: &bodyWriter)
            out.reset()
            bodyWriter.withBytes { ResponseWriter.chunk(&out, $0) }
            sink &+= out.count
        }
        // Records: what the pool encodes for the worker and the worker for the front, and their decoding.
        // The submit record is made from the decoded request as the pool makes it (defaults filled in).
        guard let api = try? APIDecoder.decodeGeneration(kind: .completions, body: req.body, id: 1, sessionHeader: nil, peer: .unknown) else {
            throw ProbeError(message: "the probe request does not decode")
        }
        let answers: [Record] = [
            .delta(DeltaRecord(requestID: 1, completionTokens: 1, text: "h")),
            .done(DoneRecord(requestID: 1, finish: .length, promptTokens: 1, completionTokens: 1, cachedTokens: 0)),
        ]
        var writer = WireWriter()
        func roundTrip(_ r: Record) {
            writer.reset()
            do {
                try r.encode(into: &writer)
                let back = try writer.withBytes { try Record.decode(type: UInt32(r.type.rawValue), payload: $0) }
                if case .delta(let d) = back { sink &+= d.text.utf8.count }
            } catch { failed = true }
        }
        let recordsNs = time(iterations) {
            roundTrip(.submit(WorkerPool.submitRecord(for: api, defaults: SamplingDefaults(), defaultMaxTokens: 256)))
            for r in answers { roundTrip(r) }
        }
        if failed { throw ProbeError(message: "the probe records do not round-trip") }
        if sink == 42 { print("", terminator: "") }   // keeps the work observable
        return Result(parseNs: parse, decodeNs: decode, responseNs: response, healthNs: healthNs, streamDeltaNs: streamDelta,
                      recordsNs: recordsNs)
    }

    public struct ProbeError: Error, CustomStringConvertible {
        public var message: String
        public var description: String { message }
    }

    /// Best of 5 rounds of `iterations / 5`, in ns per iteration (the minimum filters out preemption).
    private static func time(_ iterations: Int, _ body: () -> Void) -> Double {
        let per = max(1, iterations / 5)
        var best = Double.infinity
        for _ in 0..<5 {
            var a = timespec(), b = timespec()
            clock_gettime(CLOCK_MONOTONIC, &a)
            for _ in 0..<per { body() }
            clock_gettime(CLOCK_MONOTONIC, &b)
            let ns = Double(b.tv_sec - a.tv_sec) * 1e9 + Double(b.tv_nsec - a.tv_nsec)
            best = min(best, ns / Double(per))
        }
        return best
    }
}
