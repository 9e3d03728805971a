"""The file names of the CUB-200-2011 layout (spec §11): the loader reads them, the embedded
synthetic dataset writes them."""

CUB_DIRNAME = "CUB_200_2011"
IMAGES_FILE = "images.txt"  # <image_id> <relative path>
CLASSES_FILE = "classes.txt"  # <class_id> <class name>
LABELS_FILE = "image_class_labels.txt"  # <image_id> <class_id>
SPLIT_FILE = "train_test_split.txt"  # <image_id> <1 = train, 0 = test>
BOXES_FILE = "bounding_boxes.txt"  # <image_id> <x> <y> <width> <height>
ATTRIBUTE_NAMES_FILE = "attributes.txt"  # <attribute_id> <attribute name>
ATTRIBUTE_LABELS_FILE = (
    "attributes/image_attribute_labels.txt"  # <image_id> <attribute_id> <present> <certainty> <time>
)
IMAGES_DIR = "images"
# The embedded synthetic dataset's description (name, spec, normalisation), written last: its
# presence marks a complete dataset.
SYNTH_INFO_FILE = "qsenn_dataset.json"
