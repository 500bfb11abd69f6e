"""The data loaders a config's `data_loader.type` names (`data_loaders`), and the data sets
they read (`datasets`: the shipped digits, MNIST and CIFAR-10 files)."""
