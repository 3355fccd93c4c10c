"""The book's ``common/trainer.py``: Trainer, with its signature, attributes and output.

``Trainer(network, x_train, t_train, x_test, t_test, epochs=20, mini_batch_size=100,
optimizer='SGD', optimizer_param={'lr': 0.01}, evaluate_sample_num_per_epoch=None,
verbose=True)`` trains ``network`` (anything with ``params``, ``gradient``, ``loss`` and
``accuracy``) with a ``fastbp.optimizers`` optimizer chosen by name, drawing each
mini-batch with ``np.random.choice`` (with replacement, NumPy's global state, as the book),
and prints the book's lines: ``train loss:...`` per step, ``=== epoch:..., train acc:...,
test acc:... ===`` per epoch and the final test accuracy. ``train_loss_list``,
``train_acc_list`` and ``test_acc_list`` record them.
"""

import numpy as np

from fastbp import optimizers

__all__ = ["Trainer"]

OPTIMIZERS = {
    "sgd": optimizers.SGD,
    "momentum": optimizers.Momentum,
    "nesterov": optimizers.Nesterov,
    "adagrad": optimizers.AdaGrad,
    "rmsprop": optimizers.RMSprop,
    "adam": optimizers.Adam,
}


class Trainer:
    """Mini-batch training of ``network`` for ``epochs`` epochs (see the module doc)."""

    def __init__(
        self,
        network,
        x_train,
        t_train,
        x_test,
        t_test,
        epochs=20,
        mini_batch_size=100,
        optimizer="SGD",
        optimizer_param=None,
        evaluate_sample_num_per_epoch=None,
        verbose=True,
    ):
        if str(optimizer).lower() not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {optimizer!r}")
        if len(x_train) == 0 or len(t_train) != len(x_train):
            raise ValueError(
                f"x_train and t_train must hold the same number (> 0) of samples, got "
                f"{len(x_train)} and {len(t_train)}"
            )
        self.network = network
        self.verbose = verbose
        self.x_train, self.t_train = x_train, t_train
        self.x_test, self.t_test = x_test, t_test
        self.epochs = epochs
        self.batch_size = mini_batch_size
        self.evaluate_sample_num_per_epoch = evaluate_sample_num_per_epoch
        param = {"lr": 0.01} if optimizer_param is None else optimizer_param
        self.optimizer = OPTIMIZERS[optimizer.lower()](**param)
        self.train_size = x_train.shape[0]
        self.iter_per_epoch = max(self.train_size / mini_batch_size, 1)
        self.max_iter = int(epochs * self.iter_per_epoch)
        self.current_iter = 0
        self.current_epoch = 0
        self.train_loss_list = []
        self.train_acc_list = []
        self.test_acc_list = []

    def train_step(self):
        """One mini-batch step; at each epoch boundary also measure both accuracies."""
        batch_mask = np.random.choice(self.train_size, self.batch_size)  # noqa: NPY002
        x_batch, t_batch = self.x_train[batch_mask], self.t_train[batch_mask]
        grads = self.network.gradient(x_batch, t_batch)
        self.optimizer.update(self.network.params, grads)
        loss = self.network.loss(x_batch, t_batch)
        self.train_loss_list.append(loss)
        if self.verbose:
            print("train loss:" + str(loss))
        if self.current_iter % self.iter_per_epoch == 0:
            self.current_epoch += 1
            x_train, t_train, x_test, t_test = self.x_train, self.t_train, self.x_test, self.t_test
            n = self.evaluate_sample_num_per_epoch
            if n is not None:
                x_train, t_train, x_test, t_test = x_train[:n], t_train[:n], x_test[:n], t_test[:n]
            train_acc = self.network.accuracy(x_train, t_train)
            test_acc = self.network.accuracy(x_test, t_test)
            self.train_acc_list.append(train_acc)
            self.test_acc_list.append(test_acc)
            if self.verbose:
                print(
                    f"=== epoch:{self.current_epoch}, train acc:{train_acc}, "
                    f"test acc:{test_acc} ==="
                )
        self.current_iter += 1

    def train(self):
        """Run all ``max_iter`` steps, then print the final test accuracy."""
        for _ in range(self.max_iter):
            self.train_step()
        test_acc = self.network.accuracy(self.x_test, self.t_test)
        if self.verbose:
            print("=============== Final Test Accuracy ===============")
            print("test acc:" + str(test_acc))
