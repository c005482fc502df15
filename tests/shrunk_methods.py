"""Shrunk settings of the newer recipes, shared by the 2-process matrix, the determinism and the precision tests.

Each is merged into jef.testing's tiny settings (16 px synthetic images, ``small_cnn``, 16-wide heads) by the test
that uses it; kept here so that the three tables cannot drift apart.
"""

#: The image-text recipes on the bundled captions (64 images, 16 px views) with a one-block text tower; the online
#: and text projectors must agree in width.
CAPTIONS = {"data": {"name": "fashion_mnist_captions", "subset_train": 64, "subset_test": 32},
            "augmenter": {"size": 16}, "projector": {"name": "mlp", "dims": [16], "batch_norm": False},
            "encoders": {"text": {"tokenizer": {"context_length": 12, "max_vocab": 200},
                                  "backbone": {"width": 16, "depth": 1, "heads": 2},
                                  "projector": {"dims": [16]}}}}
#: CMC with two small CNNs (one per view) and 16-wide heads.
CMC = {"projector": {"name": "mlp", "dims": [16], "batch_norm": False},
       "encoders": {"ab": {"backbone": {"name": "small_cnn", "width": 8},
                           "projector": {"name": "mlp", "dims": [16], "batch_norm": False}}},
       "functionals": [{"name": "cmc_nce", "noise_samples": 32}]}
#: PIRL with 16-wide heads and a few noise rows.
PIRL = {"projector": {"name": "mlp", "dims": [16], "batch_norm": False},
        "functionals": [{"name": "pirl", "noise_samples": 32}]}
#: CPC on a 3 x 3 grid of 8 px patches with a 16-wide context network, at SGD 0.01: at the tiny settings' 0.1 the
#: loss (about 16) takes steps large enough to amplify float32 summation order (2 threads instead of 1) from 1e-7 to
#: 2e-4 of the loss in three steps, beyond the matrix's tolerance; at 0.01 two processes and one agree to 1e-7.
CPC = {"augmenter": {"grid": 3, "patch": 8, "stride": 4}, "functionals": [{"name": "cpc", "hidden": 16}],
       "train": {"optimizer": {"lr": 0.01}}}
#: The pretext baselines with 16-wide classifier heads; jigsaw with 4 px tiles and 10 permutations.
PRETEXT = {
    "rotation": {"functionals": [{"name": "pretext_classifier", "fact": "rotation", "hidden": [16]}]},
    "jigsaw": {"augmenter": {"tile": 4, "gap": 1, "jitter": 1, "permutations": 10},
               "functionals": [{"name": "pretext_classifier", "fact": "permutation", "classes": 10, "hidden": [16]}]},
    "relative_patch": {"augmenter": {"tile": 4, "gap": 1, "jitter": 1},
                       "functionals": [{"name": "pretext_classifier", "fact": "position", "hidden": [16]}]},
    "denoising_ae": {"functionals": [{"name": "reconstruction", "hidden": [16]}]},
}
