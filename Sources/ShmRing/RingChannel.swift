import CSwitchyardSys
import Glibc
import SysKit

/// Two rings between this process and one peer process: `tx` (we produce) and `rx` (we consume), plus the
/// peer's pidfd, shared by both sides' waits so that neither ever blocks on a dead peer for longer than
/// `policy.peerCheckNanoseconds`.
///
/// Parent (e.g. the front):
/// ```
/// let requests = try ShmRing(capacity: 1 << 20)            // parent -> child
/// let responses = try ShmRing(capacity: 1 << 20)           // child -> parent
/// var child = try ChildProcess.spawn(path: exe, arguments: ["worker", "--ring-fds", "3,4", "--parent", "\(getpid())"],
///     inherit: [InheritedDescriptor(requests.fileDescriptor, as: 3), InheritedDescriptor(responses.fileDescriptor, as: 4)])
/// let channel = try RingChannel(sending: requests, receiving: responses, peer: PeerMonitor(pid: child.pid))
/// ```
/// Child (e.g. a worker):
/// ```
/// let channel = try RingChannel(sending: ShmRing(inheritedDescriptor: 4), receiving: ShmRing(inheritedDescriptor: 3),
///                               peer: .parent(expected: parentPid))
/// ```
/// A consumer inside an io_uring loop (the front): create its receiving rings with
/// `ShmRing(capacity:consumerUsesEventFD: true)`, make one `RingNotifier` (eventfd), pass its descriptor to
/// each worker (inherited like the ring fds) and give it to the worker's `RingProducer(notifier:)`; the
/// front's `RingConsumer` gets the same notifier. Loop: drain every ring; then call `prepareToSleep()` on
/// every ring (any nil: data arrived, call `finishSleep()` on those already prepared and drain again);
/// then wait for the eventfd (IORING_OP_POLL_ADD / READ on `notifier.fileDescriptor`), read it
/// (`notifier.eventFD.consume()`), `finishSleep()` on every ring and drain. Alternatively, with
/// IORING_OP_FUTEX_WAIT, leave `consumerUsesEventFD` false and wait on `rx.wakeWord` for the value
/// `prepareToSleep()` returned (a shared, 32-bit futex). A producer in the front should use `tryReserve`
/// (never block the loop) and retry on a later loop iteration when it returns nil.
///
/// Hot loops: hold `tx` / `rx` in locals (`let tx = channel.tx`); reading them through the channel on every
/// record costs a retain/release pair, which is more than a whole record.
///
/// When the peer dies, drop the channel and create fresh rings for its replacement (a dead peer may have
/// left a half-written record or a stale sleeping flag behind).
public final class RingChannel: Sendable {
    public let tx: RingProducer
    public let rx: RingConsumer
    public let peer: PeerMonitor?

    public init(sending: ShmRing, receiving: ShmRing, peer: PeerMonitor?, policy: WaitPolicy = .default,
                txNotifier: RingNotifier? = nil, rxNotifier: RingNotifier? = nil) throws(RingError) {
        tx = try RingProducer(ring: sending, policy: policy, peer: peer, notifier: txNotifier)
        rx = try RingConsumer(ring: receiving, policy: policy, peer: peer, notifier: rxNotifier)
        self.peer = peer
    }

    /// Closes both directions (the peer's waits end with `closed`).
    public func close() {
        tx.close()
        rx.close()
    }
}
