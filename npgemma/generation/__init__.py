"""Running the model, written once for every backend.

    processing.py     image -> pixel_values, prompt -> input_ids, ids -> text (tokenizers, Pillow)
    slots.py          which cache slots are real / prefix -> positions and attention masks
    generate.py       GenerationConfig, logit filters, samplers, the prefill + decode loop
    backend.py        the Backend protocol and get_backend(name)
    numpy_backend.py  the NumPy reference behind that protocol
    streaming.py      token ids -> text pieces as they arrive
    postprocess.py    <loc>/<seg> answers -> boxes, masks, RLE, drawings
"""
