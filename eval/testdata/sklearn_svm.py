"""Oracle of eval/svm_test.go: VISSL's VOC07 SVM protocol with scikit-learn
on the multi-label features the test wrote.

For each class: LinearSVC(C, class_weight={1: 2, -1: 1}, intercept_scaling=1,
penalty='l2', loss='squared_hinge', dual=True, tol=1e-4, max_iter=2000) for
each cost of VISSL's grid, scored by cross_validate(cv=3,
scoring='average_precision') on the training set (difficult = negative);
the best cost refit on all of it; the test AP as VISSL computes it (all-point
interpolated, difficult left out). Also the test AP of every cost's fit, and
whether each fit (and each cross-validation fit) converged within max_iter.
Writes DIR/result.json.

Usage: sklearn_svm.py DIR  (DIR holds xtrain.npy ttrain.npy xtest.npy ttest.npy;
targets int64 1 / -1 / 0 = difficult)
"""
import json
import os
import sys
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import cross_validate
from sklearn.svm import LinearSVC

warnings.simplefilter("ignore", ConvergenceWarning)
COSTS = [0.01, 0.1, 1, 2, 5, 10, 15, 20, 50, 100, 1000]


def normalize(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def voc_ap(targets, preds):
    keep = targets != 0
    t, p = targets[keep] > 0, preds[keep]
    order = np.argsort(-p, kind="stable")
    tp = t[order].astype(np.float64)
    fp = 1 - tp
    prec = np.cumsum(tp) / (np.cumsum(tp) + np.cumsum(fp))
    rec = np.cumsum(tp) / np.sum(t)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def svc(c):
    return LinearSVC(C=c, class_weight={1: 2, -1: 1}, intercept_scaling=1.0, penalty="l2",
                     loss="squared_hinge", tol=1e-4, dual=True, max_iter=2000, random_state=0)


d = sys.argv[1]
xtr = normalize(np.load(os.path.join(d, "xtrain.npy")).astype(np.float64))
ttr = np.load(os.path.join(d, "ttrain.npy"))
xte = normalize(np.load(os.path.join(d, "xtest.npy")).astype(np.float64))
tte = np.load(os.path.join(d, "ttest.npy"))
out = {"ap": [], "cost": [], "cvap": [], "cv_converged": [], "ap_per_cost": [], "converged": []}
for c in range(ttr.shape[1]):
    y = np.where(ttr[:, c] == 1, 1, -1)
    cv, cvconv, per, conv = [], [], [], []
    for cost in COSTS:
        r = cross_validate(svc(cost), xtr, y, cv=3, scoring="average_precision", return_estimator=True)
        cv.append(100 * float(r["test_score"].mean()))
        cvconv.append(all(int(e.n_iter_) < 2000 for e in r["estimator"]))
        m = svc(cost).fit(xtr, y)
        per.append(100 * voc_ap(tte[:, c], m.decision_function(xte)))
        conv.append(int(m.n_iter_) < 2000)
    best = int(np.argmax(cv))
    out["cvap"].append(cv)
    out["cv_converged"].append(cvconv)
    out["cost"].append(COSTS[best])
    out["ap"].append(per[best])
    out["ap_per_cost"].append(per)
    out["converged"].append(conv)
out["map"] = float(np.mean(out["ap"]))
with open(os.path.join(d, "result.json"), "w") as f:
    json.dump(out, f)
