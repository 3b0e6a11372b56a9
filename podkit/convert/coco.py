"""COCO's categories as the model zoos number them.

torchvision's COCO detectors predict 91 labels: index = COCO category id, with "N/A" where
COCO skips an id and a background at 0. Detectron2 and MMDetection predict the 80 categories
in id order (their label k is the k-th id below).
"""

# torchvision's label list (weights.meta["categories"]), background first
TORCHVISION_LABELS = [
    "__background__", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train",
    "truck", "boat", "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter",
    "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra",
    "giraffe", "N/A", "backpack", "umbrella", "N/A", "N/A", "handbag", "tie", "suitcase",
    "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "N/A", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot",
    "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "N/A",
    "dining table", "N/A", "N/A", "toilet", "N/A", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "N/A",
    "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
]  # fmt: skip

# the 80 categories (names and ids of instances_val2017.json), in id order
COCO_CATEGORY_IDS = [
    i for i, name in enumerate(TORCHVISION_LABELS) if name not in ("N/A", "__background__")
]
COCO_CLASSES = [TORCHVISION_LABELS[i] for i in COCO_CATEGORY_IDS]
