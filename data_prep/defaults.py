"""The defaults of a preparation, in one place: PrepOptions, `prepare()` and `harness prep`
all read them. No imports: the command line builds its parser from these without loading
numpy or ffcv."""

WRITE_MODES = ("jpg", "raw", "smart")
WRITE_MODE = "smart"          # raw pixels for small images, JPEG for the rest (SMART_THRESHOLD)
JPEG_QUALITY = 90
SEED = 0                      # of the label subsets, the validation list and split_from
TEST_FRACTION = 0.5           # split_from: the share of each class that becomes test
VAL_FRACTION = 0.1            # of each class of train, carved as the validation list
VAL_MAX_PER_CLASS = 100       # at most this many validation images per class
