import ArgumentParser
import Foundation
import Rewards
import TextCraftor
import Torch

struct Score: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Score images with reward models: one row per image with every reward and the weighted total.",
        discussion: """
            Rewards are given as NAME=PATH[:WEIGHT] (WEIGHT is the gamma, default 1; the total uses the authors' \
            scales: aesthetic 3, pickscore 1, hpsv2 100, clip 100; hpsv2.1 100 and aesthetic25 3 alike; imagereward 1, \
            its scores are already standardised):
              aesthetic=CLIP_DIR,HEAD.pth   a CLIP ViT-L/14 folder and the LAION MLP head (sac+logos+ava1-l14-linearMSE.pth)
              pickscore=DIR                 PickScore_v1 (transformers CLIPModel folder)
              hpsv2=FILE.pt                 HPS_v2_compressed.pt or HPS_v2.1_compressed.pt (open_clip ViT-H-14)
              hpsv2.1=FILE.pt               HPS_v2.1_compressed.pt under its own name (the same model and loader)
              aesthetic25=SIGLIP_DIR,HEAD   Aesthetic Predictor v2.5: a SigLIP folder (google/siglip-so400m-patch14-384, \
            a SiglipModel or SiglipVisionModel) and its head (aesthetic_predictor_v2_5.pth); 384x384, no crop
              clip=DIR|FILE                 any CLIP: a transformers folder, or an open_clip checkpoint
              imagereward=FILE.pt[,VOCAB]   ImageReward.pt with med_config.json beside it, and bert-base-uncased's vocab.txt \
            (given, or beside it)
            Prompts: --prompt (one for all images), --prompts (a file, one line per image), or, for a folder written by \
            `textcraftor generate`, the prompts in its metadata.json.

            Preprocessing: with --preprocessing evaluation (the default) each reward sees the files' 8-bit pixels as \
            its published tool does, so the numbers equal what that tool prints for the same files: Pillow's bicubic \
            Image.resize, reproduced bit for bit, then the tool's crop (torchvision's Resize + CenterCrop for \
            aesthetic, hpsv2, hpsv2.1, imagereward and open_clip CLIPs; transformers' CLIPImageProcessor for \
            pickscore and transformers CLIP folders; SigLIP's 384x384 resize for aesthetic25), ToTensor and the \
            mean and std. --preprocessing training runs the tensor path training uses on generated images (adaptive \
            average pooling of the float image, no crop).
            """)

    @Option(name: .customLong("images"), parsing: .upToNextOption, help: "Image files (PNG, JPEG) or folders of them.")
    var images: [String]
    @Option(help: "One prompt for every image.") var prompt: String?
    @Option(help: "A text file with one prompt per image, in order.", completion: .file()) var prompts: String?
    @Option(name: .customLong("reward"), help: "NAME=PATH[:WEIGHT], repeatable.") var rewards: [String]
    @Option(help: "evaluation (the reward models' own tools: Pillow's resize of the 8-bit files and their crop) or training (the authors' pooling of the float image).")
    var preprocessing = "evaluation"
    @Option(help: "Images per forward pass.") var batchSize = 8
    @OptionGroup var deviceOptions: DeviceOptions
    @Flag(help: "One JSON object per image (and one for the mean) instead of a table.") var json = false

    func run() throws {
        guard let mode = PreprocessingMode(rawValue: preprocessing) else {
            throw CommandError("--preprocessing \(preprocessing): expected evaluation or training")
        }
        let device = try speakingFlags { try deviceOptions.opened() }
        guard batchSize >= 1 else { throw CommandError("--batch-size must be at least 1 (got \(batchSize))") }
        guard !rewards.isEmpty else { throw CommandError("give at least one --reward NAME=PATH") }
        let files = try imageFiles()
        let texts = try promptsForImages(files)
        let weighted = WeightedReward()
        for spec in rewards {
            let reward = try speakingFlags { try RewardOption(spec: spec) }
            weighted.add(try RewardRegistry.load(name: reward.name, paths: reward.paths, device: device), gamma: reward.gamma)
        }
        weighted.setPreprocessing(mode)

        var rows: [(file: String, scores: [Double], total: Double)] = []
        let bar = files.count > batchSize ? ProgressBar("score", total: files.count) : nil
        for start in stride(from: 0, to: files.count, by: batchSize) {
            let batch = Array(files[start..<min(start + batchSize, files.count)])
            let prompts = Array(texts[start..<start + batch.count])
            let result = try withNoGrad {
                if mode == .evaluation { return try scoreFiles(try batch.map { try ImageIO.readRGB8($0) }, prompts: prompts, weighted, device) }
                return try score(try batch.map { try ImageIO.read($0) }, prompts: prompts, weighted, device)
            }
            rows += result.enumerated().map { (batch[$0.offset].path, $0.element.scores, $0.element.total) }
            bar?.update(start + batch.count)
        }
        try report(rows, names: weighted.terms.map(\.reward.name))
    }

    /// Scores a batch of 8-bit images as the rewards' published tools do (any sizes: each is resized on its own).
    func scoreFiles(_ images: [RGB8Image], prompts: [String], _ weighted: WeightedReward, _ device: Device) throws
        -> [(scores: [Double], total: Double)]
    {
        let (total, terms) = try weighted.evaluate(files: images, prompts: prompts, device: device)
        let totals = total.toArray(Double.self)
        let perReward = terms.map { $0.scores.toArray(Double.self) }
        return totals.indices.map { k in (perReward.map { $0[k] }, totals[k]) }
    }

    /// Training preprocessing: scores a batch; images of different sizes go one by one (each is resized by the preprocessing anyway).
    func score(_ images: [Tensor], prompts: [String], _ weighted: WeightedReward, _ device: Device) throws
        -> [(scores: [Double], total: Double)]
    {
        let sameSize = Set(images.map(\.shape)).count == 1
        let groups = sameSize ? [Array(images.indices)] : images.indices.map { [$0] }
        var out = [(scores: [Double], total: Double)](repeating: ([], 0), count: images.count)
        for group in groups {
            let batch = (group.count == 1 ? images[group[0]].unsqueeze(0) : Tensor.stack(group.map { images[$0] })).to(device)
            let (total, terms) = try weighted.evaluate(batch, prompts: group.map { prompts[$0] })
            let totals = total.toArray(Double.self)
            let perReward = terms.map { $0.scores.toArray(Double.self) }
            for (k, i) in group.enumerated() { out[i] = (perReward.map { $0[k] }, totals[k]) }
        }
        return out
    }

    func imageFiles() throws -> [URL] {
        var files: [URL] = []
        for path in images {
            var isFolder: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isFolder) else {
                throw CommandError("\(path): no such file or folder")
            }
            files += isFolder.boolValue ? try ImageIO.imageFiles(in: URL(fileURLWithPath: path)) : [URL(fileURLWithPath: path)]
        }
        guard !files.isEmpty else { throw CommandError("no PNG or JPEG images in \(images.joined(separator: ", "))") }
        return files
    }

    func promptsForImages(_ files: [URL]) throws -> [String] {
        if let prompt { return Array(repeating: prompt, count: files.count) }
        if let prompts {
            guard let handle = FileHandle(forReadingAtPath: prompts) else {
                throw CommandError("\(prompts): cannot read the prompts file")
            }
            let text = String(decoding: handle.readDataToEndOfFile(), as: UTF8.self)
            let lines = text.split(whereSeparator: \.isNewline).map(String.init)
            guard lines.count == files.count else {
                throw CommandError("\(prompts) has \(lines.count) prompts for \(files.count) images: give one line per image")
            }
            return lines
        }
        // A folder written by `textcraftor generate`: its metadata names the prompt of each image.
        if images.count == 1, let data = FileManager.default.contents(atPath: images[0] + "/metadata.json"),
            let metadata = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
            let generated = metadata["prompts"] as? [String], let perPrompt = metadata["images_per_prompt"] as? Int,
            let names = metadata["images"] as? [String]
        {
            let byName = Dictionary(uniqueKeysWithValues: names.enumerated().map { ($1, generated[$0 / perPrompt]) })
            if let texts = try? files.map({ file in
                guard let text = byName[file.lastPathComponent] else { throw CommandError("") }
                return text
            }) { return texts }
        }
        throw CommandError("give --prompt, or --prompts with one line per image")
    }

    func report(_ rows: [(file: String, scores: [Double], total: Double)], names: [String]) throws {
        let count = Double(rows.count)
        let means = names.indices.map { i in rows.reduce(0) { $0 + $1.scores[i] } / count }
        let meanTotal = rows.reduce(0) { $0 + $1.total } / count
        if json {
            for row in rows { print(try scoreJSONLine(image: row.file, names: names, scores: row.scores, total: row.total)) }
            print(try scoreJSONLine(image: "mean", names: names, scores: means, total: meanTotal))
            return
        }
        func cells(_ values: [Double], _ total: Double) -> [String] { (values + [total]).map { String(format: "%.4f", $0) } }
        printTable(["image"] + names + ["total"],
                   rows.map { [$0.file] + cells($0.scores, $0.total) } + [["mean"] + cells(means, meanTotal)])
    }
}
