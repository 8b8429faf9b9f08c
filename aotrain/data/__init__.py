"""Training data: webdataset shards -> (image, tokens) batches."""
