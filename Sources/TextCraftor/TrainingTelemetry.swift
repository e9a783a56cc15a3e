import Foundation
import StableDiffusion
import Torch

// TensorBoard logging of a training run (`config.tensorBoard`), in `OUT/tensorboard/` (so `tensorboard --logdir OUT`,
// or a folder of runs, finds it): one event per step holding every number of the step's metrics.jsonl line as a
// scalar of the same name (loss, each reward, grad_norm, lr, step_time, loss_scale under fp16), and every
// `imagesEvery` steps an image `images`: a grid of the images the step sampled and scored (decoded before its
// update, so no extra sampling; the last accumulated batch, and under data-parallel training rank 0's rows).
// Only the writer rank logs. A resumed run first drops the events of steps after its checkpoint from the older files
// (`TensorBoardLog.truncate`), then writes a new file: TensorBoard reads a folder's files in name order as one run.

extension Trainer {
    /// Logs a step's metrics (and, when due, its images) to the run's event file, opening it at the first call.
    func logTensorBoard(_ report: StepReport, images: Tensor?) throws {
        let settings = config.tensorBoard
        guard settings.enabled else { return }
        var values = Self.tensorBoardScalars(metricsRecord(report))
        if settings.imagesEvery > 0, report.step % settings.imagesEvery == 0, let images {
            values.append(TensorBoardValue(tag: "images", image: TrainingImages.grid(images)))
        }
        if tensorBoardWriter == nil { tensorBoardWriter = try TensorBoardWriter(folder: run.tensorBoard) }
        try tensorBoardWriter?.write(step: report.step, values: values)
    }

    /// The numbers of a metrics.jsonl line as scalars named by their keys, sorted (`step` is the event's own, and
    /// flags such as `skipped` are no scalars).
    static func tensorBoardScalars(_ record: [String: Any]) -> [TensorBoardValue] {
        record.keys.sorted().filter { $0 != "step" }.compactMap { key -> TensorBoardValue? in
            switch record[key] {
            case is Bool: nil
            case let value as Double: TensorBoardValue(tag: key, scalar: value)
            case let value as Int: TensorBoardValue(tag: key, scalar: Double(value))
            default: nil
            }
        }
    }
}

/// A batch of images as one PNG for TensorBoard.
public enum TrainingImages {
    /// The longest side a grid cell keeps: larger images are scaled down (bilinear, antialiased), so that a grid of
    /// SDXL images stays a few megabytes (the PNG encoder stores pixels uncompressed).
    public static let maxCellSide = 512

    /// [B, 3, H, W] in [0, 1] (any device and float type) as a grid, ceil(√B) columns with 2 black pixels between
    /// cells, PNG-encoded.
    public static func grid(_ images: Tensor) -> TensorBoardImage {
        precondition(images.rank == 4 && images.size(1) == 3, "TrainingImages.grid: expected [B, 3, H, W], got \(images.shape)")
        var batch = withNoGrad { images.detach().to(dtype: .float32, device: .cpu) }
        let (count, h0, w0) = (batch.size(0), batch.size(2), batch.size(3))
        if max(h0, w0) > maxCellSide {
            let scale = Double(maxCellSide) / Double(max(h0, w0))
            let size = (max(1, Int((Double(h0) * scale).rounded())), max(1, Int((Double(w0) * scale).rounded())))
            batch = withNoGrad { Functional.interpolate(batch, size: size, mode: .bilinear, antialias: true) }
        }
        let (h, w) = (batch.size(2), batch.size(3))
        let pixels = withNoGrad { (batch * 255).round().clamp(min: 0, max: 255).to(.uint8).permute([0, 2, 3, 1]).contiguous() }
            .toArray(UInt8.self)
        let columns = Int(Double(count).squareRoot().rounded(.up)), rows = (count + columns - 1) / columns
        let pad = 2
        let width = columns * w + (columns - 1) * pad, height = rows * h + (rows - 1) * pad
        var grid = [UInt8](repeating: 0, count: width * height * 3)
        for index in 0..<count {
            let (top, left) = ((index / columns) * (h + pad), (index % columns) * (w + pad))
            for y in 0..<h {
                let source = (index * h + y) * w * 3, target = ((top + y) * width + left) * 3
                grid.replaceSubrange(target..<target + w * 3, with: pixels[source..<source + w * 3])
            }
        }
        return TensorBoardImage(height: height, width: width, colorspace: 3,
                                encoded: PNG.encode(pixels: grid, width: width, height: height, channels: 3))
    }
}
