import ArgumentParser
import Foundation
import Torch

struct Doctor: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check the installation: libtorch, its version, threads, CUDA and the Swift toolchain.",
        discussion: "Exits with status 1 when something needs fixing (a libtorch other than the pinned version).")

    @Flag(help: "Also print libtorch's full build configuration.")
    var verbose = false

    func run() throws {
        var problems: [String] = []
        func row(_ name: String, _ value: String) { print(name.padding(toLength: 18, withPad: " ", startingAt: 0) + value) }

        row("libtorch", Torch.libraryDirectory?.path ?? "(not found in the process map)")
        let runtime = Torch.runtimeVersion ?? "unknown"
        if runtime == Torch.pinnedVersion {
            row("version", "\(runtime) (pinned \(Torch.pinnedVersion): ok)")
        } else {
            row("version", "\(runtime) (pinned \(Torch.pinnedVersion): MISMATCH)")
            problems.append("""
                the loaded libtorch is \(runtime), this build is pinned to \(Torch.pinnedVersion): unset LIBTORCH / \
                LIBTORCH_USE_PYTORCH (or point them at torch \(Torch.pinnedVersion)) and run `make` again
                """)
        }
        if Torch.compiledVersion != runtime {
            problems.append("compiled against libtorch \(Torch.compiledVersion) but running \(runtime): rebuild (make clean && make)")
        }
        row("threads", "\(Torch.threadCount) intra-op (of \(ProcessInfo.processInfo.activeProcessorCount) cores)")
        do {
            try Torch.loadCUDA()
            let count = Torch.cudaDeviceCount
            row("cuda", count > 0 ? "available, \(count) device(s)" : "libtorch_cuda.so loaded, but no CUDA device found")
        } catch {
            row("cuda", "not available: \(error)")
        }
        row("swift", swiftVersion)
        row("os", ProcessInfo.processInfo.operatingSystemVersionString)
        if verbose { print("\n" + Torch.buildConfiguration) }
        if !problems.isEmpty {
            for problem in problems { print("problem: \(problem)") }
            throw ExitCode.failure
        }
        print("all good")
    }

    /// The language version this binary was compiled with (the toolchain is at least this).
    var swiftVersion: String {
        #if swift(>=6.3)
            "6.3 or newer"
        #elseif swift(>=6.2)
            "6.2"
        #elseif swift(>=6.1)
            "6.1"
        #else
            "6.0"
        #endif
    }
}
