import Foundation
import TextCraftor
import Torch

/// `--nproc-per-node N`: runs this same command as N processes on this machine, rank i with RANK=i, LOCAL_RANK=i,
/// WORLD_SIZE=N, MASTER_ADDR=127.0.0.1 and a free MASTER_PORT, and waits. If one fails, the others are given the
/// group's timeout to stop on their own (they do: their next collective fails and names the rank), then killed.
/// Returns the exit status: 0, or the first failure's.
enum Launcher {
    static func run(processes: Int, arguments: [String], port: Int?, timeout: Double) throws -> Int32 {
        let executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        guard let port = port ?? ProcessGroup.freePort() else {
            throw CommandError("cannot find a free port on 127.0.0.1: give --master-port")
        }
        var children: [Process] = []
        signal(SIGINT, SIG_IGN)  // Ctrl-C reaches the children through the terminal; they save and stop together
        for rank in 0..<processes {
            let process = Process()
            process.executableURL = executable
            process.arguments = arguments
            var env = ProcessInfo.processInfo.environment
            env["RANK"] = String(rank)
            env["LOCAL_RANK"] = String(rank)
            env["WORLD_SIZE"] = String(processes)
            env["LOCAL_WORLD_SIZE"] = String(processes)
            env["MASTER_ADDR"] = "127.0.0.1"
            env["MASTER_PORT"] = String(port)
            // Each rank gets its share of the cores, as torchrun's OMP_NUM_THREADS default intends.
            if env["OMP_NUM_THREADS"] == nil {
                env["OMP_NUM_THREADS"] = String(max(1, ProcessInfo.processInfo.activeProcessorCount / processes))
            }
            process.environment = env
            try process.run()
            children.append(process)
        }
        var firstFailure: (rank: Int, status: Int32)? = nil
        var deadline: Date? = nil
        while children.contains(where: \.isRunning) {
            for (rank, child) in children.enumerated() where !child.isRunning && child.terminationStatus != 0 && firstFailure == nil {
                firstFailure = (rank, child.terminationStatus)
                deadline = Date().addingTimeInterval(timeout + 10)
            }
            if let deadline, Date() > deadline {
                for child in children where child.isRunning { kill(child.processIdentifier, SIGKILL) }
            }
            usleep(50_000)
        }
        for (rank, child) in children.enumerated() where child.terminationStatus != 0 && firstFailure == nil {
            firstFailure = (rank, child.terminationStatus)
        }
        if let firstFailure {
            FileHandle.standardError.write(Data("launcher: rank \(firstFailure.rank) exited with status \(firstFailure.status)\n".utf8))
            return firstFailure.status
        }
        return 0
    }

    /// The arguments of this run without the launcher's own flags.
    static func childArguments(_ arguments: [String]) -> [String] {
        var out: [String] = []
        var skip = false
        for argument in arguments {
            if skip { skip = false; continue }
            if argument == "--nproc-per-node" || argument == "--master-port" { skip = true; continue }
            if argument.hasPrefix("--nproc-per-node=") || argument.hasPrefix("--master-port=") { continue }
            out.append(argument)
        }
        return out
    }
}
