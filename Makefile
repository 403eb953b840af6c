# Project-root shortcuts the KubeOpenCode docs teach: `make agent-build AGENT=devbox`.
# Each one runs the same target of agents/Makefile, so there is one way to build.

.PHONY: help agent-build agent-push agent-buildx

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(firstword $(MAKEFILE_LIST)) | sed 's/:.*## /\t/' | sed 's/^/  /'
	@echo "Variables: AGENT, IMG_REGISTRY, IMG_ORG, VERSION (see agents/Makefile)"

agent-build: ## make -C agents build
	$(MAKE) -C agents build

agent-push: ## make -C agents push
	$(MAKE) -C agents push

agent-buildx: ## make -C agents buildx
	$(MAKE) -C agents buildx
