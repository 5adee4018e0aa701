import ArgumentParser

@main
struct SwitchyardBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "switchyard-bench",
        abstract: "Switchyard benchmarks (JSON output with --json).",
        subcommands: [
            RingBench.self,
            RingBenchPeer.self,
            RoutingBench.self,
            TokenizerBench.self,
            ServeBench.self,
            SamplerBench.self,
            FrontBench.self,
            EchoServerCommand.self,
            EngineBenchCommand.self,
            EngineShardCommand.self,
            MakeModelCommand.self,
        ]
    )
}
