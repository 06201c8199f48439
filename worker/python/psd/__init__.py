"""psd: Python client of the psd parameter-server cluster (issue 18).

Use psd.torch to train a torch.nn.Module on psd's parameter servers. The
C++ extension psd._psd wraps psd's own worker client (worker/ps_client.h,
common/membership.h).
"""
