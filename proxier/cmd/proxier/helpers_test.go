package main

import (
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"

	"github.com/proxymodes/proxymodes/proxier/core"
)

func fullChanges() core.ChangeSet {
	return core.ChangeSet{Full: true, Services: sets.New[types.NamespacedName]()}
}
