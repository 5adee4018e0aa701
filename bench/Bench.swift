import ArgumentParser

@main
struct SwitchyardBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "switchyard-bench",
        abstract: "Switchyard benchmarks (JSON output with --json).",
        subcommands: [EngineBenchCommand.self, MakeModelCommand.self, TokenizerBench.self, SamplerBench.self]
    )
}
