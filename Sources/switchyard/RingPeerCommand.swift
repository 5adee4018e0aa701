import ArgumentParser
import Glibc
import ShmRing
import SysKit

/// Hidden test process for the ring tests: attaches to two inherited rings and runs one side of a stress
/// exchange (or streams records until killed). Exit status: 0 verified, 1 verification failed, 2 ring error.
struct RingPeerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ring-peer", abstract: "Ring stress peer (test helper).", shouldDisplay: false)

    @Option(help: "Inherited descriptor of the ring this process consumes.") var rxFd: Int32 = 3
    @Option(help: "Inherited descriptor of the ring this process produces.") var txFd: Int32 = 4
    @Option(help: "The parent's pid (peer-death detection).") var parent: Int32
    @Option(help: "Records to send and to receive.") var count: UInt64 = 1_000_000
    @Option(help: "spin or futex.") var mode: String = "futex"
    @Option(help: "Pattern seed of the records this process receives.") var rxSeed: UInt64 = 1
    @Option(help: "Pattern seed of the records this process sends.") var txSeed: UInt64 = 2
    @Option(help: "Largest record payload.") var maxSize: Int = 200
    @Flag(help: "Send records forever, never read (for kill tests).") var stream = false

    func run() throws {
        var failed = false
        do {
            let policy: WaitPolicy = mode == "spin" ? .spin : .default
            let peer = try PeerMonitor.parent(expected: parent)
            let channel = try RingChannel(sending: ShmRing(inheritedDescriptor: txFd),
                                          receiving: ShmRing(inheritedDescriptor: rxFd), peer: peer, policy: policy)
            let txPattern = RingStressPattern(seed: txSeed, maxSize: maxSize)
            if stream {
                try RingStress.send(channel.tx, pattern: txPattern, count: .max)
                return
            }
            let tx = channel.tx
            let sendCount = count
            let sender = try JoinableThread {
                do {
                    try RingStress.send(tx, pattern: txPattern, count: sendCount)
                } catch {
                    ringPeerLog("send: \(error)")
                    Glibc.exit(2)
                }
            }
            let problem = try RingStress.receive(channel.rx, pattern: RingStressPattern(seed: rxSeed, maxSize: maxSize),
                                                 count: count)
            sender.join()
            if let problem {
                ringPeerLog(problem)
                failed = true
            }
        } catch {
            ringPeerLog("\(error)")
            throw ExitCode(2)
        }
        if failed { throw ExitCode(1) }
    }
}

private func ringPeerLog(_ message: String) {
    let line = "ring-peer: \(message)\n"
    _ = line.utf8CString.withUnsafeBufferPointer { write(2, $0.baseAddress, $0.count - 1) }
}
