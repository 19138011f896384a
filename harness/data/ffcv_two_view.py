"""Both views from one JPEG decode: FFCV operations over a (2, H, W, 3) sample.

FFCV 1.0.2 decodes a field once per pipeline, so the classic two-view loader (one
RandomResizedCropRGBImageDecoder per view) decodes every JPEG twice and compiles two image
pipelines. Here one pipeline carries both views:

- `TwoViewCropDecoder` decodes each stored image once (jpg, raw, or a mix of both: smart) into
  its scratch buffer and takes both views' random-resized crops from it, each resized into its
  slot of the sample's (2, H, W, 3) output. The crop boxes come from FFCV's own
  `get_random_crop` (the same draws as its decoder: scale uniform in `scale`, log-ratio uniform
  in log `ratio`, ten tries, then the centre fallback), one per view, in that order. FFCV's
  decoder draws from numba's per-thread generator, never seeded; here each sample reseeds its
  thread's generator from (the loader's seed and rank, the image's index, its place in the
  batch, the batch's first index) before its draws, so the crops repeat from run to run
  whatever thread takes the sample, differ between epochs (FFCV's seeded shuffle puts an image
  in a different batch), and follow a resumed run's epoch order.
- `TwoViewFlip` and `TwoViewPhotometric` run the single-view kernels (`flip_batch`,
  `augment_batch`) over the batch seen as 2N images (image i's view a at 2i, view b at 2i + 1,
  a reshape, no copy), with each view's parameters drawn from that view's own seeded stream:
  the same draws as the per-view pipelines make.
"""

from dataclasses import replace

import numpy as np
from ffcv.fields.rgb_image import IMAGE_MODES, get_random_crop
from ffcv.libffcv import imdecode, resize_crop
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from ffcv.pipeline.operation import Operation
from numba import get_num_threads, njit

from .augment import ViewAugment
from .ffcv_augment import PhotometricAugment, augment_batch
from .ffcv_flip import flip_batch

__all__ = ["SeededCropDecoder", "TwoViewCropDecoder", "TwoViewFlip", "TwoViewPhotometric",
           "sample_seed"]

_U32 = np.uint64(0xFFFFFFFF)


@njit(cache=True, nogil=True)
def _mix(h, v):
    # splitmix64's finaliser over h + v * golden ratio: every input bit reaches every output bit.
    h = (h + np.uint64(v) * np.uint64(0x9E3779B97F4A7C15)) & np.uint64(0xFFFFFFFFFFFFFFFF)
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


@njit(cache=True, nogil=True)
def sample_seed(seed, source_ix, dst_ix, first_ix):
    """The 32-bit seed of one sample's crop draws (numba's np.random.seed takes 32 bits)."""
    h = _mix(np.uint64(seed), np.uint64(source_ix))
    h = _mix(h, np.uint64(dst_ix))
    h = _mix(h, np.uint64(first_ix))
    return np.uint32(h & _U32)


class TwoViewCropDecoder(Operation):
    """FFCV decoder for an RGBImageField: one decode, two random-resized crops per image.

    output_size: (height, width) of both views; scales, ratios: each view's (min, max) crop
    area fraction and aspect ratio, as RandomResizedCropRGBImageDecoder takes them; seed: the
    stream of the crop draws (a loader passes its seed, rank and stream through SeedSequence).
    """

    views = 2

    def __init__(self, output_size: tuple[int, int], scales, ratios, seed: int = 0):
        super().__init__()
        self.output_size = tuple(output_size)
        self.scales = np.array(scales, dtype=np.float64).reshape(self.views, 2)
        self.ratios = np.array(ratios, dtype=np.float64).reshape(self.views, 2)
        self.seed = int(seed) & 0xFFFFFFFFFFFFFFFF

    def _sample_shape(self) -> tuple[int, ...]:
        return (2, self.output_size[0], self.output_size[1], 3)

    def declare_state_and_memory(self, previous_state):
        # uint64 for the scratch size: max_height * max_width * 3 overflows 32 bits easily.
        max_width = np.uint64(self.metadata["width"].max())
        max_height = np.uint64(self.metadata["height"].max())
        shape = self._sample_shape()
        dtype = np.dtype("<u1")
        return (replace(previous_state, jit_mode=True, shape=shape, dtype=dtype),
                (AllocationQuery(shape, dtype),
                 AllocationQuery((max_height * max_width * np.uint64(3),), dtype)))

    def _image_reader(self):
        """The compiled function that decodes (jpg) or views (raw) one stored image, H x W x 3,
        in its scratch buffer, after seeding the sample's crop draws."""
        jpg = IMAGE_MODES["jpg"]
        mem_read = self.memory_read
        imdecode_c = Compiler.compile(imdecode)
        seed = np.uint64(self.seed)

        def read_image(batch_indices, dst_ix, temp_storage, metadata, storage_state):
            source_ix = batch_indices[dst_ix]
            np.random.seed(sample_seed(seed, source_ix, dst_ix, batch_indices[0]))
            field = metadata[source_ix]
            image_data = mem_read(field["data_ptr"], storage_state)
            height = np.uint32(field["height"])
            width = np.uint32(field["width"])
            if field["mode"] == jpg:
                temp_buffer = temp_storage[dst_ix]
                imdecode_c(image_data, temp_buffer, height, width, height, width, 0, 0, 1, 1,
                           False, False)
                temp_buffer = temp_buffer.reshape(-1)[:3 * height * width]
                return temp_buffer.reshape(height, width, 3)
            return image_data.reshape(height, width, 3)

        return Compiler.compile(read_image)

    def generate_code(self):
        my_range = Compiler.get_iterator()
        read_image = self._image_reader()
        resize_crop_c = Compiler.compile(resize_crop)
        get_crop_c = Compiler.compile(get_random_crop)
        scales, ratios = self.scales, self.ratios

        def decode(batch_indices, my_storage, metadata, storage_state):
            destination, temp_storage = my_storage
            n = len(batch_indices)
            for dst_ix in my_range(n):
                image = read_image(batch_indices, dst_ix, temp_storage, metadata, storage_state)
                height, width = np.uint32(image.shape[0]), np.uint32(image.shape[1])
                for view in range(2):
                    i, j, h, w = get_crop_c(height, width, scales[view], ratios[view])
                    resize_crop_c(image, i, i + h, j, j + w, destination[dst_ix, view])
            return destination[:n]

        decode.is_parallel = True
        return decode


class SeededCropDecoder(TwoViewCropDecoder):
    """FFCV's RandomResizedCropRGBImageDecoder (the same draws, H x W x 3 samples) with each
    sample's draws seeded as TwoViewCropDecoder seeds them: crops that repeat from run to run,
    whatever the threads (FFCV's draw from numba's unseeded generator). The labelled loader's
    decoder (linear evaluation, fine-tuning)."""

    views = 1

    def __init__(self, output_size: tuple[int, int], scale=(0.08, 1.0), ratio=(0.75, 4 / 3),
                 seed: int = 0):
        super().__init__(output_size, scale, ratio, seed)

    def _sample_shape(self) -> tuple[int, ...]:
        return (self.output_size[0], self.output_size[1], 3)

    def generate_code(self):
        my_range = Compiler.get_iterator()
        read_image = self._image_reader()
        resize_crop_c = Compiler.compile(resize_crop)
        get_crop_c = Compiler.compile(get_random_crop)
        scale, ratio = self.scales[0], self.ratios[0]

        def decode(batch_indices, my_storage, metadata, storage_state):
            destination, temp_storage = my_storage
            n = len(batch_indices)
            for dst_ix in my_range(n):
                image = read_image(batch_indices, dst_ix, temp_storage, metadata, storage_state)
                i, j, h, w = get_crop_c(np.uint32(image.shape[0]), np.uint32(image.shape[1]),
                                        scale, ratio)
                resize_crop_c(image, i, i + h, j, j + w, destination[dst_ix])
            return destination[:n]

        decode.is_parallel = True
        return decode


def _as_views(images: np.ndarray) -> np.ndarray:
    """N x 2 x H x W x 3 as 2N x H x W x 3 (view a of image i at 2i, view b at 2i + 1)."""
    n, two, h, w, c = images.shape
    return images.reshape(n * two, h, w, c)


def _check_two_views(op: str, state) -> None:
    if len(state.shape) != 4 or state.shape[0] != 2 or state.shape[-1] != 3:
        raise ValueError(f"{op} takes 2 x H x W x 3 samples: put it after TwoViewCropDecoder "
                         f"(got {state.shape})")


class TwoViewFlip(Operation):
    """Each view flipped left-right with its own probability, from its own seeded generator.

    ps: (p_a, p_b); seeds: one per view. A view with p 0 draws nothing, as a per-view pipeline
    without a flip. `generators` may be re-seeded between epochs.
    """

    def __init__(self, ps: tuple[float, float], seeds):
        super().__init__()
        for p in ps:
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"flip probability {p} must lie in [0, 1]")
        self.ps = tuple(float(p) for p in ps)
        self.generators = [np.random.default_rng(s) for s in seeds]

    def generate_code(self):
        ps, generators = self.ps, self.generators

        def flip(images, destination):
            n = images.shape[0]
            chosen = np.zeros((n, 2), bool)
            for view, (p, rng) in enumerate(zip(ps, generators)):
                if p:
                    chosen[:, view] = rng.random(n) < p
            flip_batch(_as_views(images), chosen.reshape(-1), _as_views(destination[:n]))
            return destination[:n]

        return flip

    def declare_state_and_memory(self, previous_state):
        _check_two_views("TwoViewFlip", previous_state)
        return (replace(previous_state, jit_mode=False),
                AllocationQuery(previous_state.shape, previous_state.dtype))


class TwoViewPhotometric(Operation):
    """Both views' colour jitter, grayscale, blur and solarization, in place, in one kernel call.

    Holds one PhotometricAugment per view (their seeded `generator`s are the two streams, as
    in the per-view pipelines); the pixel work runs on numba's threads over all 2N images.
    """

    def __init__(self, views: tuple[ViewAugment, ViewAugment], resolution: int, seeds):
        super().__init__()
        self.views = tuple(PhotometricAugment(v, resolution, seed=s) for v, s in zip(views, seeds))

    def generate_code(self):
        augments = self.views
        kernel_size = augments[0].kernel_size

        def photometric(images, _):
            n = images.shape[0]
            drawn = [a.kernel_args(n) for a in augments]
            # Row 2i from view a's draws, row 2i + 1 from view b's.
            args = [np.stack(pair, axis=1).reshape(2 * n, *pair[0].shape[1:])
                    for pair in zip(*drawn)]
            augment_batch(_as_views(images), *args, kernel_size, 4 * get_num_threads())
            return images

        return photometric

    def declare_state_and_memory(self, previous_state):
        _check_two_views("TwoViewPhotometric", previous_state)
        if previous_state.dtype != np.uint8:
            raise ValueError(f"TwoViewPhotometric takes uint8 images, got {previous_state.dtype}")
        return replace(previous_state, jit_mode=False), None
