"""Every default, limit, file name and environment variable of birdclf, in one place."""

from __future__ import annotations

from .formats import FILE_EXTENSIONS, PILLOW_FORMATS

__all__ = [
    "ENV_PREFIX", "ENV_MODEL", "ENV_HOME", "ENV_THREADS", "ENV_MAX_BYTES", "ENV_MAX_PIXELS", "ENV_MAX_IMAGES",
    "ENV_ALLOW_PRIVATE_URLS", "ENV_URL_TIMEOUT", "ENV_CORS_ORIGINS", "ENV_API_URL", "ENV_API_KEY",
    "ENV_API_TIMEOUT", "ENV_WEIGHTS_URL", "ENV_BIRD_THRESHOLD", "ENV_DECODE_MEMORY", "ENV_REQUEST_TIMEOUT",
    "ENV_LOG_LEVEL", "ENV_UPLOAD_BUDGET", "DEFAULT_DECODE_MEMORY", "DEFAULT_UPLOAD_BUDGET", "DEFAULT_REQUEST_TIMEOUT",
    "MAX_JSON_BYTES", "API_PREFIX", "MODEL_CALLS", "SERVE_BATCH", "MAX_TINY_PIECES", "MIN_MEAN_PIECE", "MAX_ECHOED",
    "DEFAULT_MAX_BYTES", "DEFAULT_MAX_PIXELS", "DEFAULT_MAX_IMAGES", "DEFAULT_URL_TIMEOUT",
    "DEFAULT_API_TIMEOUT", "DEFAULT_TOP_K", "MAX_TOP_K", "DEFAULT_BIRD_THRESHOLD", "DEFAULT_SPECIES_THRESHOLD",
    "STARTER_BIRD_THRESHOLD", "STARTER_TEMPERATURE", "STARTER_SPECIES_THRESHOLD", "STARTER_CALIBRATION_NOTE",
    "DEFAULT_HOST", "DEFAULT_FUNCTION_PORT", "DEFAULT_APP_PORT", "DEFAULT_API_URL",
    "METADATA_KEY", "INPUT_NAME", "INPUT_PRECISE", "OUTPUT_LOGITS", "OUTPUT_BIRD", "OUTPUT_MAP", "OUTPUT_OTHER",
    "ONNX_OPSET", "OTHER_BIRD_PASS", "SECOND_LOOK_MARGIN", "SECOND_LOOK_BELOW_SPECIES", "SECOND_LOOK_BIRD_BAND",
    "SECOND_LOOK_OTHER_RATIO",
    "STARTER_ARCH", "STARTER_MODEL_NAME", "STARTER_FILENAME", "MODEL_FILENAME",
    "CPU_ARCH", "GPU_ARCH", "IMAGE_EXTENSIONS", "ALLOWED_FORMATS", "SPECIES_INFO_URL",
]

# Environment variables (settings and secrets never live in code or notebooks).
ENV_PREFIX = "BIRDCLF_"  # every setting is BIRDCLF_<FIELD> of birdclf.settings.Settings
ENV_MODEL = "BIRDCLF_MODEL"  # path to the ONNX model to serve
ENV_HOME = "BIRDCLF_HOME"  # where built models (the starter) are cached
ENV_THREADS = "BIRDCLF_THREADS"  # onnxruntime intra-op threads
ENV_MAX_BYTES = "BIRDCLF_MAX_BYTES"  # largest accepted image, in bytes
ENV_MAX_PIXELS = "BIRDCLF_MAX_PIXELS"  # largest accepted image, in pixels (width x height)
ENV_MAX_IMAGES = "BIRDCLF_MAX_IMAGES"  # most images in one request
ENV_ALLOW_PRIVATE_URLS = "BIRDCLF_ALLOW_PRIVATE_URLS"  # "1" lets {"url": ...} reach loopback (tests)
ENV_URL_TIMEOUT = "BIRDCLF_URL_TIMEOUT"  # seconds to fetch an image URL
ENV_CORS_ORIGINS = "BIRDCLF_CORS_ORIGINS"  # comma-separated origins allowed by CORS
ENV_API_URL = "BIRDCLF_API_URL"  # where the web app finds the prediction function
ENV_API_KEY = "BIRDCLF_API_KEY"  # Azure function key, sent as x-functions-key
ENV_API_TIMEOUT = "BIRDCLF_API_TIMEOUT"  # seconds the web app waits for the function
ENV_WEIGHTS_URL = "BIRDCLF_WEIGHTS_URL"  # a state-dict URL that overrides the timm hub
ENV_BIRD_THRESHOLD = "BIRDCLF_BIRD_THRESHOLD"  # bird probability under which we say "not a bird"
ENV_DECODE_MEMORY = "BIRDCLF_DECODE_MEMORY"  # bytes of decoded pixels held at once, over all requests
ENV_REQUEST_TIMEOUT = "BIRDCLF_REQUEST_TIMEOUT"  # seconds one whole request may take (body, fetch, decode, model)
ENV_LOG_LEVEL = "BIRDCLF_LOG_LEVEL"  # DEBUG, INFO, WARNING, ERROR
ENV_UPLOAD_BUDGET = "BIRDCLF_UPLOAD_BUDGET"  # bytes of request bodies held at once, over all requests

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MAX_IMAGES = 16
DEFAULT_URL_TIMEOUT = 10.0
DEFAULT_REQUEST_TIMEOUT = 30.0
# One 50 Mpx RGBA image decodes to 200 MB: images that large are decoded one at a time, small ones side by side.
DEFAULT_DECODE_MEMORY = 256 * 1024 * 1024
# Bodies being received or waiting to be decoded, over all requests (raw bodies in memory, multipart files spooled
# to temporary files past 1 MB each); never less than one largest request.
DEFAULT_UPLOAD_BUDGET = 256 * 1024 * 1024
# The API runs the model on at most SERVE_BATCH images per call and MODEL_CALLS calls at a time: on 2 cores two
# single-image calls side by side ran 13% faster per image than one, batches past 4 were no faster per image, and
# two calls of 16 images each grew the onnxruntime arena by 150 MB (bench.function, 2026-12-01).
MODEL_CALLS = 2
SERVE_BATCH = 4
MAX_JSON_BYTES = 256 * 1024  # a JSON body holds URLs, never image data
# Body pieces (upload chunks, or reads of an image URL's body) sent before their mean size is checked, and that
# mean's floor: 1-byte chunks cost a parse each.
MAX_TINY_PIECES = 1024
MIN_MEAN_PIECE = 256
MAX_ECHOED = 200  # file names, URLs and paths echoed back in answers are cut to this many characters
DEFAULT_API_TIMEOUT = 30.0
DEFAULT_TOP_K = 5
MAX_TOP_K = 50
DEFAULT_BIRD_THRESHOLD = 0.5
DEFAULT_SPECIES_THRESHOLD = 0.5  # models without calibration: "species" when the top-1 probability is >= 50%
# Measured on 2,024 real bird photos (../shared/data): 99.2% score >= 0.15; 20 non-bird photos all < 0.06.
STARTER_BIRD_THRESHOLD = 0.15
# The starter's verdict calibration, fitted by `python -m bench.gate` on real photos of its own classes.
STARTER_TEMPERATURE = 0.638
STARTER_SPECIES_THRESHOLD = 0.875
STARTER_CALIBRATION_NOTE = ("fitted on 229 photos of its own classes (cub50, kaggle525-sample); on 191 other such "
                            "photos 82.7% were answered 'species', all of them right; of 2,604 photos of 44 cub50 "
                            "species it does not know, 72.8% were answered 'unsure', 0.7% 'not a bird' and 26.5% "
                            "were wrongly named")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_FUNCTION_PORT = 7071  # the Azure Functions host's local port
DEFAULT_APP_PORT = 8866  # Voila's default port
API_PREFIX = "/api"
DEFAULT_API_URL = f"http://{DEFAULT_HOST}:{DEFAULT_FUNCTION_PORT}{API_PREFIX}"

# The ONNX contract every birdclf model follows.
METADATA_KEY = "birdclf_config"
INPUT_NAME = "input"
OUTPUT_LOGITS = "logits"
OUTPUT_BIRD = "bird_probability"
OUTPUT_MAP = "bird_map"  # (N, h, w) P(bird) at each place of the last features: where the bird is
OUTPUT_OTHER = "other_bird"  # (N, 1) logit of the "other bird" class (models trained with --other-birds)
ONNX_OPSET = 18
INPUT_PRECISE = "precise"  # INT8 models with a second look: True runs the fp32 copy inside the same file

# The INT8 model's fp32 second look (birdclf.serving.second_look): an answer INT8's noise could change is computed
# again in fp32. Chosen on the cub50 head-only model's test photos, checked on the fine-tuned one (bench/README.md).
SECOND_LOOK_MARGIN = 0.1  # the top two calibrated probabilities closer than this
SECOND_LOOK_BELOW_SPECIES = 0.05  # the top-1 this little under the species threshold ("unsure" that may be species)
SECOND_LOOK_BIRD_BAND = 0.02  # P(bird) this close to the bird threshold
# P(other bird) under the other-bird threshold by less than this factor (INT8 moves small P(other) by a factor of
# 2.4 at the median on cub50: measured with `bench.int8`, see README)
SECOND_LOOK_OTHER_RATIO = 2.0

# Models trained with an "other bird" class (--other-birds): a photo is held back (`unsure`) when that class wins,
# or when P(other bird) is above what this share of the known species' photos reach out of fold (bench/open_set.py).
OTHER_BIRD_PASS = 0.80

STARTER_ARCH = "tf_efficientnet_lite0"
STARTER_MODEL_NAME = "starter-imagenet-birds-lite0"
STARTER_FILENAME = "starter.onnx"
MODEL_FILENAME = "model.onnx"

CPU_ARCH = "tf_efficientnet_lite0"
GPU_ARCH = "efficientnet_b3a"

IMAGE_EXTENSIONS = FILE_EXTENSIONS  # from the one format table, birdclf.formats
ALLOWED_FORMATS = PILLOW_FORMATS
SPECIES_INFO_URL = "https://en.wikipedia.org/wiki/Special:Search?search={query}"
