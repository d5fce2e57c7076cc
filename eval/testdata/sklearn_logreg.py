"""Oracle of eval/linear_test.go: a well-regularised logistic regression
(scikit-learn, the inverse penalty C chosen by 5-fold cross-validation) on the
frozen features the test wrote; prints its test top-1 accuracy in percent as
JSON into DIR/result.json.

Usage: sklearn_logreg.py DIR  (DIR holds xtrain.npy ytrain.npy xtest.npy ytest.npy)
"""
import json
import os
import sys

import numpy as np
from sklearn.linear_model import LogisticRegressionCV

d = sys.argv[1]
xtr = np.load(os.path.join(d, "xtrain.npy")).astype(np.float64)
ytr = np.load(os.path.join(d, "ytrain.npy"))
xte = np.load(os.path.join(d, "xtest.npy")).astype(np.float64)
yte = np.load(os.path.join(d, "ytest.npy"))
clf = LogisticRegressionCV(Cs=[0.003, 0.01, 0.03, 0.1, 0.3, 1], cv=3, max_iter=2000, multi_class="multinomial")
clf.fit(xtr, ytr)
top1 = 100.0 * float(np.mean(clf.predict(xte) == yte))
with open(os.path.join(d, "result.json"), "w") as f:
    json.dump({"top1": top1, "C": float(clf.C_[0])}, f)
