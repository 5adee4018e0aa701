// FrontConfig.deferConsume: a Unix-socket request stays in the client's socket until its answer goes out.
// The client's SIOCOUTQ (bytes it sent that the server has not taken out of the socket yet) shows when.
import Foundation
import Glibc
import Testing
@testable import Front

/// Bytes `fd` has sent that its peer has not read yet (SIOCOUTQ; for Unix sockets their buffer memory).
private func unreadByServer(_ fd: Int32) -> Int32 {
    var n: Int32 = -1
    _ = ioctl(fd, UInt(0x5411) /* SIOCOUTQ */, &n)
    return n
}

/// SIOCOUTQ of `fd` once it is 0 (the server consumes a request right after sending its answer, so a client
/// can see the answer a moment before), or its value after 1 s.
private func unreadByServerSettled(_ fd: Int32) -> Int32 {
    var n = unreadByServer(fd)
    for _ in 0..<1000 where n != 0 {
        usleep(1000)
        n = unreadByServer(fd)
    }
    return n
}

@Suite(.serialized) struct DeferredConsumeTests {
    private static func slowEcho() -> EchoBackend.Options {
        var o = EchoBackend.Options()
        o.delayPerWord = 0.1   // two words: the answer comes ~0.2 s after the request
        return o
    }

    @Test func peekHoldsTheRequestUntilItsAnswer() throws {
        let s = try TestServer(configure: { $0.deferConsume = true }, echo: Self.slowEcho())
        defer { s.stop() }
        let c = try RawClient(path: s.path)
        try c.send(request("POST", "/v1/completions", body: #"{"prompt":"a b","max_tokens":2}"#))
        usleep(60_000)   // the front has parsed and dispatched it long ago
        #expect(s.backend.submittedCount == 1)
        #expect(unreadByServer(c.fd) > 0)
        let r = try c.read()
        #expect(r.status == 200)
        #expect(unreadByServerSettled(c.fd) == 0)
        // The connection goes on: a second request, and an immediate answer (consumed with it).
        try c.send(request("GET", "/health"))
        #expect(try c.read().status == 200)
        #expect(unreadByServerSettled(c.fd) == 0)
    }

    /// An answer's send and the recv that takes its request out of the socket go into the kernel in one
    /// io_uring_enter (so a client on the front's CPU is not woken a second time, for nothing, by a consume of
    /// its own); every request is consumed exactly, and the connection goes on, pipelined requests included.
    @Test func answerAndItsConsumeGoOutTogether() throws {
        let s = try TestServer(configure: { $0.deferConsume = true })
        defer { s.stop() }
        let c = try RawClient(path: s.path)
        for k in 0..<30 {
            try c.send(request("POST", "/v1/completions", body: #"{"prompt":"n\#(k)","max_tokens":1}"#))
            let r = try c.read()
            #expect(r.status == 200)
            #expect(try Self.text(r) == "n\(k)")
            #expect(unreadByServerSettled(c.fd) == 0)
        }
        try c.send(request("POST", "/v1/completions", body: #"{"prompt":"p","max_tokens":1}"#)
                   + request("GET", "/health") + request("POST", "/v1/completions", body: #"{"prompt":"q","max_tokens":1}"#))
        #expect(try Self.text(try c.read()) == "p")
        #expect(try c.read().status == 200)
        #expect(try Self.text(try c.read()) == "q")
        #expect(unreadByServerSettled(c.fd) == 0)
        try c.send(request("GET", "/health"))
        #expect(try c.read().status == 200)
        s.stop()
        #expect(s.server.consumesWithAnswers >= 30, "only \(s.server.consumesWithAnswers) requests were consumed with their answers")
    }

    /// A completion's text.
    private static func text(_ r: RawResponse) throws -> String? {
        guard case .array(let ch)? = try r.json()["choices"], case .string(let t)? = ch.first?["text"] else { return nil }
        return t
    }

    /// While the front lingers, the connection answered last is peeked as soon as task work shows up
    /// (takeHotConnection), one io_uring_enter before the poll's completion. The request so taken is held
    /// back in the socket like any other until its answer; the poll's completion for the same bytes,
    /// arriving while it is being answered, finds nothing new and consumes nothing; a request pipelined
    /// behind it is still read and answered in order; a client that hangs up mid-request is still noticed.
    @Test func lingerTakesTheHotConnectionAhead() throws {
        let s = try TestServer(configure: { $0.deferConsume = true; $0.lingerNanoseconds = 200_000 },
                               echo: Self.slowEcho())
        defer { s.stop() }
        let c = try RawClient(path: s.path)
        try c.send(request("GET", "/health"))
        #expect(try c.read().status == 200)
        for k in 0..<20 {
            // Sent right after the last answer: the front is still lingering on this connection.
            try c.send(request("POST", "/v1/completions", body: #"{"prompt":"w\#(k) x","max_tokens":2}"#))
            usleep(60_000)   // parsed and dispatched long ago; its answer takes ~0.2 s
            #expect(unreadByServer(c.fd) > 0, "request \(k) was taken out of the socket before its answer")
            let r = try c.read()
            #expect(r.status == 200)
            #expect(try Self.text(r) == "w\(k) x")
            #expect(unreadByServerSettled(c.fd) == 0)
        }
        // Pipelined behind an in-flight request: both answered, in order.
        try c.send(request("POST", "/v1/completions", body: #"{"prompt":"p q","max_tokens":2}"#)
                   + request("POST", "/v1/completions", body: #"{"prompt":"r s","max_tokens":2}"#))
        for want in ["p q", "r s"] {
            let r = try c.read()
            #expect(try Self.text(r) == want)
        }
        // A hang-up while a request taken ahead is in flight cancels it.
        try c.send(request("GET", "/health"))
        #expect(try c.read().status == 200)
        try c.send(request("POST", "/v1/completions", body: #"{"prompt":"gone now","max_tokens":2}"#))
        usleep(60_000)
        let cancelledBefore = s.backend.cancelledRequests.count
        shutdown(c.fd, Int32(SHUT_RDWR))
        var cancelled = false
        for _ in 0..<200 where !cancelled { usleep(5000); cancelled = s.backend.cancelledRequests.count > cancelledBefore }
        #expect(cancelled, "the hang-up did not cancel the in-flight request")
        s.stop()
        #expect(s.server.hotTakes > 0, "no request was taken ahead (the test did not exercise the path)")
    }

    @Test func multishotTakesTheRequestAtOnce() throws {
        let s = try TestServer(configure: { $0.deferConsume = false }, echo: Self.slowEcho())
        defer { s.stop() }
        let c = try RawClient(path: s.path)
        try c.send(request("POST", "/v1/completions", body: #"{"prompt":"a b","max_tokens":2}"#))
        usleep(60_000)
        #expect(unreadByServer(c.fd) == 0)
        #expect(try c.read().status == 200)
    }

    @Test func peekTakesPartialRequestsAtOnce() throws {
        // Nobody waits for an answer while a request is incomplete: those bytes are consumed on arrival
        // (no re-peeking of a large body as it trickles in).
        let s = try TestServer(configure: { $0.deferConsume = true })
        defer { s.stop() }
        let c = try RawClient(path: s.path)
        let whole = Array(request("POST", "/v1/completions", body: #"{"prompt":"a b c","max_tokens":3}"#).utf8)
        try c.send(Array(whole[..<(whole.count - 10)]))
        usleep(60_000)
        #expect(unreadByServer(c.fd) == 0)
        try c.send(Array(whole[(whole.count - 10)...]))
        let r = try c.read()
        #expect(r.status == 200)
        #expect(try r.json()["choices"] != nil)
    }

    /// More than a 64 KiB peek of pipelined requests the front answers on the spot (404s naming their path):
    /// each answer sends a consume of the held-back bytes with it, and the loop looks at the socket again only
    /// once that consume has completed. Every request is answered once, in order, and nothing is left unread.
    @Test func pipelinedOnTheSpotAnswersBeyondOnePeek() throws {
        let s = try TestServer(configure: { $0.deferConsume = true })
        defer { s.stop() }
        let c = try RawClient(path: s.path)
        let count = 3000
        var all = ""
        for i in 0..<count { all += request("GET", "/nothing-\(i)") }
        #expect(all.utf8.count > 2 * 65536)
        let bytes = Array(all.utf8)
        let fd = c.fd
        let writer = Thread {
            var off = 0
            while off < bytes.count {
                let n = bytes[off...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, min($0.count, 7000), Int32(MSG_NOSIGNAL)) }
                if n <= 0 { return }
                off += n
            }
        }
        writer.start()
        for i in 0..<count {
            let r = try c.read()
            #expect(r.status == 404)
            if !r.bodyText.contains("/nothing-\(i)\"") {
                Issue.record("answer \(i) is not for its request: \(r.bodyText)")
                return
            }
        }
        try c.send(request("GET", "/health"))
        #expect(try c.read().status == 200)
        #expect(unreadByServerSettled(c.fd) == 0)
    }

    @Test func peekLargeBodiesPipeliningAndEOF() throws {
        let s = try TestServer(configure: { $0.deferConsume = true })
        defer { s.stop() }
        let c = try RawClient(path: s.path)
        // A body over the 64 KiB peek buffer, then two pipelined requests in one write.
        let words = (0..<25_000).map { "w\($0 % 10)" }.joined(separator: " ")
        let big = request("POST", "/v1/completions", body: #"{"prompt":"\#(words)","max_tokens":2}"#)
        #expect(big.utf8.count > 65536)
        try c.send(big + request("GET", "/health") + request("POST", "/v1/completions", body: #"{"prompt":"x y","max_tokens":1}"#))
        let r1 = try c.read()
        #expect(r1.status == 200)
        #expect(try c.read().status == 200)
        let r3 = try c.read()
        #expect(r3.status == 200)
        #expect(r3.bodyText.contains("\"x\""))
        // The client closes after a request whose answer is still coming: the request is cancelled.
        var o = Self.slowEcho()
        o.delayPerWord = 0.05
        let s2 = try TestServer(configure: { $0.deferConsume = true }, echo: o)
        defer { s2.stop() }
        do {
            let c2 = try RawClient(path: s2.path)
            try c2.send(request("POST", "/v1/completions", body: #"{"prompt":"\#((0..<100).map { "w\($0)" }.joined(separator: " "))","stream":true}"#))
            var got = [UInt8](repeating: 0, count: 256)
            #expect(recv(c2.fd, &got, got.count, 0) > 0)
        }   // the client closes here
        #expect(s2.backend.awaitCancellations().count == 1)
    }
}
