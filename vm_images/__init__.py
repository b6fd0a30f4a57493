"""Sandbox images: software bundles, the in-sandbox supervisor and the image builder.

``vm_images.builder.ensure_image(bundles, progress=...)`` returns the tag of the
image for a bundle set, building it once (tag = hash of its inputs).
"""
