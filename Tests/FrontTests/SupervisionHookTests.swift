import CSwitchyardSys
import Foundation
import Glibc
import Synchronization
import Testing
@testable import Front

/// Delegates generation to an EchoBackend and watches one eventfd standing in for a worker's pidfd.
final class WatchingBackend: FrontBackend, @unchecked Sendable {
    // @unchecked Sendable: `log` is behind a Mutex; the rest is immutable or used on the loop thread only.
    let echo = EchoBackend()
    let fakePidFD: Int32 = sy_fr_eventfd(0)
    let log = Mutex<(readable: [Int32], ticks: Int, watching: Bool)>(([], 0, true))

    var wakeFD: Int32 { echo.wakeFD }
    func submit(_ r: APIRequest) -> Admission { echo.submit(r) }
    func tokenize(requestID: UInt64, content: String, addSpecial: Bool, parseSpecial: Bool) -> Admission {
        echo.tokenize(requestID: requestID, content: content, addSpecial: addSpecial, parseSpecial: parseSpecial)
    }
    func detokenize(requestID: UInt64, tokens: [Int32]) -> Admission { echo.detokenize(requestID: requestID, tokens: tokens) }
    func cancel(requestID: UInt64) { echo.cancel(requestID: requestID) }
    func drain(_ deliver: (BackendEvent) -> Void) { echo.drain(deliver) }
    var modelIDs: [String] { echo.modelIDs }
    func health() -> BackendHealth { echo.health() }
    func collectMetrics(into metrics: MetricsRegistry) { echo.collectMetrics(into: metrics) }

    func watchedFDs() -> [Int32] { log.withLock { $0.watching } ? [fakePidFD] : [] }
    func fdReadable(_ fd: Int32) {
        var v: UInt64 = 0
        _ = read(fd, &v, 8)
        log.withLock { $0.readable.append(fd); $0.watching = false }   // "respawn" happens later
    }
    var tickInterval: Double? { 0.02 }
    func tick() { log.withLock { $0.ticks += 1; $0.watching = true } }
}

// Part of the serialized FrontServerTests suite: it opens sockets and fds, which the descriptor-leak tests
// count process-wide, so it must not run beside them.
extension FrontServerTests {
    @Test func watchedFDsAndTicksReachTheBackend() throws {
        let dir = TestServer.tempDir()
        var cfg = FrontConfig()
        cfg.socketPath = dir + "/s.sock"
        cfg.handleSignals = false
        cfg.useSystemdSockets = false
        cfg.log = { _, _ in }
        let b = WatchingBackend()
        let server = try FrontServer(config: cfg, backend: b)
        let done = DispatchSemaphore(value: 0)
        Thread { try? server.run(); done.signal() }.start()
        defer {
            server.requestShutdown()
            _ = done.wait(timeout: .now() + 5)
            b.echo.stop()
            close(b.fakePidFD)
            rmdir(dir)
        }
        var one: UInt64 = 1
        for round in 1...2 {
            _ = write(b.fakePidFD, &one, 8)   // the "worker" exits
            var seen = 0
            for _ in 0..<200 where seen < round { usleep(10_000); seen = b.log.withLock { $0.readable.count } }
            #expect(seen == round)
            // Re-watched after a tick (the backend lists the fd again).
            for _ in 0..<200 where !b.log.withLock({ $0.watching }) { usleep(10_000) }
        }
        #expect(b.log.withLock { $0.ticks } >= 1)
        // Requests still work through the delegating backend.
        let c = try RawClient(path: cfg.socketPath ?? "")
        try c.send(request("POST", "/v1/completions", body: #"{"prompt":"still here"}"#))
        #expect(try c.read().bodyText.contains("still here"))
    }
}
