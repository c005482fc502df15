"""Built-in datasets, registered through the ``jef_register_datasets`` hook."""


from jef.data.captions import (
    COCO_PAPER,
    FashionCaptionsOptions,
    ImageTextOptions,
    build_fashion_mnist_captions,
    build_image_text,
)
from jef.data.fashion import PAPER as FASHION_PAPER
from jef.data.fashion import FashionMiniOptions, FashionOptions, build_fashion_mnist, build_fashion_mnist_mini
from jef.data.folder import FolderOptions, build_image_folder
from jef.data.idx import IdxOptions, build_idx
from jef.data.synthetic import SyntheticOptions, build_synthetic
from jef.data.tvision import TorchvisionOptions, build_torchvision
from jef.hookspecs import Register, hookimpl


@hookimpl
def jef_register_datasets(register: Register) -> None:
    """Register fashion_mnist_mini, fashion_mnist, idx, torchvision, image_folder, synthetic and the image-text
    datasets image_text and fashion_mnist_captions."""
    register("fashion_mnist_mini", build_fashion_mnist_mini, options=FashionMiniOptions,
             description="Bundled class-balanced Fashion-MNIST subset: 10k train / 2k test, 28x28 grey, "
                         "works offline",
             paper=FASHION_PAPER)
    register("fashion_mnist", build_fashion_mnist, options=FashionOptions,
             description="Full Fashion-MNIST (60k/10k) from local IDX files (root, torchvision layout, "
                         "or Debian's /usr/share/datasets/fashion-mnist)",
             paper=FASHION_PAPER)
    register("idx", build_idx, options=IdxOptions,
             description="Images and optional labels from IDX files (gzip or raw), e.g. MNIST, KMNIST",
             paper="LeCun, Cortes & Burges, The MNIST database (IDX file format)")
    register("torchvision", build_torchvision, options=TorchvisionOptions,
             description="Any torchvision.datasets class by name (CIFAR10, STL10, SVHN, ...), decoded lazily")
    register("image_folder", build_image_folder, options=FolderOptions,
             description="A folder of images: subfolders as classes, or flat and unlabelled; resized on load; "
                         "unreadable files skipped and listed in the run directory (on_bad_image)")
    register("synthetic", build_synthetic, options=SyntheticOptions,
             description="Procedural texture classes (stripes, dots, rings, ...) for tests and quick CPU runs")
    register("image_text", build_image_text, options=ImageTextOptions,
             description="Image-caption pairs from a captions file: csv, jsonl, COCO captions json, or webdataset "
                         "tar shards; samples carry image, text, label and index",
             paper=COCO_PAPER)
    register("fashion_mnist_captions", build_fashion_mnist_captions, options=FashionCaptionsOptions,
             description="Bundled fashion_mnist_mini (10k/2k, 28x28 grey) with one generated caption per image, "
                         "for image-text methods; works offline",
             paper=FASHION_PAPER)
