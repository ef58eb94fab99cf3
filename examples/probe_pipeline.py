"""The frozen-features recipe as a user writes it: a pretrained backbone as a scikit-learn
transformer, StandardScaler + LogisticRegression, tuned with GridSearchCV, scored with
accuracy_score. Runs offline on CIFAR-10 JPEGs (a small subset, so it takes a minute or two).

    python examples/probe_pipeline.py [path/to/cifar10-jpeg.zip]
"""

import sys
from pathlib import Path

from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from tlearn import PretrainedFeatures, load_image_folder

zip_path = (
    sys.argv[1]
    if len(sys.argv) > 1
    else str(Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg.zip")
)
train = load_image_folder(f"{zip_path}/train", max_per_class=30)
test = load_image_folder(f"{zip_path}/test", max_per_class=20)

pipe = Pipeline(
    [
        ("features", PretrainedFeatures("efficientnet_lite0", cache_dir="feature-cache")),
        ("scaler", StandardScaler()),
        ("clf", LogisticRegression(max_iter=1000)),
    ]
)
# The feature cache makes every fold after the first skip the network.
search = GridSearchCV(pipe, {"clf__C": [0.001, 0.01, 0.1, 1.0]}, cv=3)
search.fit(train.filenames, train.target)
print("best C:", search.best_params_["clf__C"])
print("test accuracy:", accuracy_score(test.target, search.predict(test.filenames)))
