"""What a matrix names: preference data (data, with the builtin `letters` task in letters) and models (models),
and turning pairs into token ids (tokenize). Torch-free; the driver validates with it and workers load with it."""
