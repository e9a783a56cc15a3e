import Foundation
import Testing
import Torch

/// Data-parallel training on 2 CPU processes over loopback (c10d: TCPStore + Gloo), against one process.
@Suite(.serialized, .enabled(if: ProcessGroup.isAvailable, "built without Gloo's headers (libgloo-dev)"))
struct DistributedCLITests {
    let rewards = repository.appendingPathComponent("Tests/RewardsTests/Fixtures/hf").path

    func prompts() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("dp-prompts-\(UUID().uuidString).txt")
        try "a red circle\na blue square\na green cat\na small dog\nan old car\na tall tree\n".write(to: url, atomically: true, encoding: .utf8)
        return url
    }

    /// 4 steps of batch 4: --lr 1e-4, so that float rounding (a mean over 4 rows, or the mean of 2 ranks' means over 2)
    /// stays far below the tolerance after Adam's normalisation.
    func train(_ out: URL, _ prompts: URL, _ extra: [String]) throws -> (status: Int32, out: String, err: String) {
        try textcraftor(["train", "--model", tinySD15, "--prompts", prompts.path, "--reward", "aesthetic=\(rewards)/clip,\(rewards)/aesthetic.pth",
                         "--out", out.path, "--sampling-steps", "2", "--grad-window", "1", "--lr", "1e-4", "--batch-size", "4",
                         "--seed", "5", "--save-every", "1", "--sync-check-every", "1"] + extra)
    }

    func weights(_ run: URL) throws -> [String: Tensor] {
        try Tensor.load(safetensors: run.appendingPathComponent("text_encoder/model.safetensors"))
    }

    func maxDifference(_ a: [String: Tensor], _ b: [String: Tensor]) -> Double {
        #expect(Set(a.keys) == Set(b.keys))
        return a.keys.map { (a[$0]! - b[$0]!).abs().max().item() }.max() ?? .infinity
    }

    @Test func twoRanksStepAsOneProcessAndResumeWithAnyWorldSize() throws {
        let file = try prompts()
        let one = temporaryOutput(), two = temporaryOutput(), twoThenOne = temporaryOutput(), oneThenTwo = temporaryOutput()
        defer { [one, two, twoThenOne, oneThenTwo].forEach { try? FileManager.default.removeItem(at: $0) } }

        let single = try train(one, file, ["--max-steps", "4"])
        #expect(single.status == 0, "\(single.err)")
        let parallel = try train(two, file, ["--max-steps", "4", "--nproc-per-node", "2"])
        #expect(parallel.status == 0, "\(parallel.err)")
        let reference = try weights(one)
        let difference = maxDifference(try weights(two), reference)
        #expect(difference <= 1e-6, "2 ranks vs 1 process: max |Δparameter| \(difference)")
        // Only rank 0 writes: one metrics line per step, one progress bar.
        let metrics = try String(contentsOf: two.appendingPathComponent("metrics.jsonl"), encoding: .utf8)
        #expect(metrics.split(separator: "\n").count == 4)
        #expect(parallel.out.components(separatedBy: "trained 4 steps").count == 2)

        // Stopped after 2 steps and resumed with the other world size: the same parameters as straight through.
        #expect(try train(twoThenOne, file, ["--max-steps", "2", "--nproc-per-node", "2"]).status == 0)
        let resumedAlone = try textcraftor(["train", "--resume", twoThenOne.path, "--max-steps", "4"])
        #expect(resumedAlone.status == 0, "\(resumedAlone.err)")
        #expect(maxDifference(try weights(twoThenOne), reference) <= 1e-6)

        // A backend named for one process forms a group of one: the collectives run and change nothing.
        let alone = temporaryOutput()
        defer { try? FileManager.default.removeItem(at: alone) }
        let groupOfOne = try train(alone, file, ["--max-steps", "4", "--dist-backend", "gloo"])
        #expect(groupOfOne.status == 0, "\(groupOfOne.err)")
        #expect(maxDifference(try weights(alone), reference) <= 1e-6)

        #expect(try train(oneThenTwo, file, ["--max-steps", "2"]).status == 0)
        let resumedTwo = try textcraftor(["train", "--resume", oneThenTwo.path, "--max-steps", "4", "--nproc-per-node", "2"])
        #expect(resumedTwo.status == 0, "\(resumedTwo.err)")
        #expect(maxDifference(try weights(oneThenTwo), reference) <= 1e-6)
    }

    @Test(arguments: [
        (["--dist-backend", "mpi"], "Error: The value 'mpi' is invalid for '--dist-backend <NAME>'. Please provide one of 'auto', 'gloo' or 'nccl'."),
        (["--dist-backend", "nccl"], "Error: --dist-backend: nccl needs a CUDA device (NCCL runs on GPUs; Gloo serves the CPU)"),
    ])
    func badBackendsFailInOneLine(flags: [String], message: String) throws {
        let out = temporaryOutput()
        defer { try? FileManager.default.removeItem(at: out) }
        let result = try train(out, try prompts(), ["--max-steps", "1"] + flags)
        #expect(result.status != 0)
        #expect(result.err.split(separator: "\n").last.map(String.init) == message, "\(result.err)")
    }

    /// SIGKILL: rank 1 dies (its sockets close); SIGSTOP: it hangs, and rank 0's collective times out.
    @Test(arguments: [SIGKILL, SIGSTOP])
    func aRankThatDiesOrHangsStopsTheOthersWithItsName(signal: Int32) throws {
        let timeout = 8.0
        let file = try prompts()
        let out = temporaryOutput()
        defer { try? FileManager.default.removeItem(at: out) }
        var products = Bundle.main.bundleURL
        while !FileManager.default.fileExists(atPath: products.appendingPathComponent("textcraftor").path) { products.deleteLastPathComponent() }
        let port = try #require(ProcessGroup.freePort())
        var ranks: [Process] = []
        let errors = [Pipe(), Pipe()]
        for rank in 0..<2 {
            let process = Process()
            process.executableURL = products.appendingPathComponent("textcraftor")
            process.arguments = ["train", "--model", tinySD15, "--prompts", file.path, "--reward", "aesthetic=\(rewards)/clip,\(rewards)/aesthetic.pth",
                                 "--out", out.path, "--sampling-steps", "2", "--grad-window", "1", "--batch-size", "2",
                                 "--max-steps", "100000", "--save-every", "2", "--dist-timeout", "\(Int(timeout))"]
            var env = ProcessInfo.processInfo.environment
            env.merge(["RANK": "\(rank)", "WORLD_SIZE": "2", "LOCAL_RANK": "\(rank)", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "\(port)", "OMP_NUM_THREADS": "1"]) { $1 }
            process.environment = env
            process.standardOutput = FileHandle.nullDevice
            process.standardError = errors[rank]
            try process.run()
            ranks.append(process)
        }
        // Rank 1 is killed once training is under way (rank 0 wrote a checkpoint).
        let checkpoint = out.appendingPathComponent("checkpoints/step-00000002/state.json")
        let start = Date()
        while !FileManager.default.fileExists(atPath: checkpoint.path), ranks[0].isRunning, Date().timeIntervalSince(start) < 300 { usleep(20_000) }
        guard FileManager.default.fileExists(atPath: checkpoint.path) else {
            ranks.forEach { kill($0.processIdentifier, SIGKILL); $0.waitUntilExit() }
            let err = String(decoding: errors[0].fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            Issue.record("rank 0 wrote no checkpoint in \(Int(Date().timeIntervalSince(start))) s: \(err)")
            return
        }
        kill(ranks[1].processIdentifier, signal)
        let killedAt = Date()
        let err = String(decoding: errors[0].fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        ranks[0].waitUntilExit()
        let waited = Date().timeIntervalSince(killedAt)
        kill(ranks[1].processIdentifier, SIGKILL)
        ranks[1].waitUntilExit()
        #expect(ranks[0].terminationStatus == 1)
        #expect(waited < timeout + 30, "rank 0 stopped \(waited) s after rank 1 stopped (timeout \(timeout) s)")
        let line = err.split(separator: "\n").last.map(String.init) ?? ""
        #expect(line.hasPrefix("Error: rank 0: rank 1 (last at step ") && line.contains("stopped responding at step"), "\(err)")
        // The last good checkpoint is whole: it has its state and weights.
        let checkpoints = try FileManager.default.contentsOfDirectory(atPath: out.appendingPathComponent("checkpoints").path)
        #expect(!checkpoints.isEmpty)
        for name in checkpoints where name.hasPrefix("step-") {
            #expect(FileManager.default.fileExists(atPath: out.appendingPathComponent("checkpoints/\(name)/state.json").path))
        }
    }
}
