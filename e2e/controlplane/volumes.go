package main

// Local volumes for --node. The default StorageClass has no provisioner
// (kubernetes.io/no-provisioner, WaitForFirstConsumer), so claims bind only to existing PVs.
// Rather than a fixed pool of pre-created PVs (whose sizes and number would have to fit every
// test, and which tests deleting their namespaces would use up as they turn Released), this
// loop creates one hostPath PV per pending claim of that class, sized to the claim and
// pre-bound to it, with its data in DIR/pv/NAME; and deletes a PV and its data once its claim is
// gone (Released). Pre-binding lets the PV controller bind it even under WaitForFirstConsumer.
//
// A hostPath directory holds whatever is written to it, whatever the claim's size. Claims of the
// second class, `local-sized`, get a tmpfs of exactly the claim's size mounted there instead, for
// tests that need a volume that fills up (a spool that runs out of space). Its data lives in
// memory: it goes with the PV, and with the node (cleanup unmounts it, as a reboot would).

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

const (
	localStorageClass = "local"
	// sizedStorageClass gets a tmpfs of the claim's size (see above).
	sizedStorageClass = "local-sized"
	// localPVLabel marks the PVs this loop made (and may delete).
	localPVLabel = "controlplane.e2e/local-volume"
)

func runLocalVolumes(ctx context.Context, cs kubernetes.Interface, dataDir string) error {
	factory := informers.NewSharedInformerFactory(cs, 0)
	claims := factory.Core().V1().PersistentVolumeClaims()
	volumes := factory.Core().V1().PersistentVolumes()
	queue := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())
	defer queue.ShutDown()
	enqueue := func(prefix string) cache.ResourceEventHandlerFuncs {
		add := func(obj any) {
			if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
				queue.Add(prefix + key)
			}
		}
		return cache.ResourceEventHandlerFuncs{AddFunc: add, UpdateFunc: func(_, obj any) { add(obj) }}
	}
	if _, err := claims.Informer().AddEventHandler(enqueue("claim:")); err != nil {
		return err
	}
	if _, err := volumes.Informer().AddEventHandler(enqueue("volume:")); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), claims.Informer().HasSynced, volumes.Informer().HasSynced) {
		return ctx.Err()
	}
	go func() {
		<-ctx.Done()
		queue.ShutDown()
	}()
	for {
		key, quit := queue.Get()
		if quit {
			return ctx.Err()
		}
		var err error
		if name, ok := strings.CutPrefix(key, "volume:"); ok {
			err = syncLocalVolume(ctx, cs, volumes.Lister().Get, dataDir, name)
		} else if nsName, ok := strings.CutPrefix(key, "claim:"); ok {
			ns, name, _ := cache.SplitMetaNamespaceKey(nsName)
			err = syncClaim(ctx, cs, claims.Lister().PersistentVolumeClaims(ns).Get, dataDir, name)
		}
		if err != nil && ctx.Err() == nil {
			logf("local volumes: %s: %v", key, err)
			queue.AddRateLimited(key)
		} else {
			queue.Forget(key)
		}
		queue.Done(key)
	}
}

// syncClaim creates the PV for a pending filesystem claim of the local class.
func syncClaim(ctx context.Context, cs kubernetes.Interface, get func(string) (*corev1.PersistentVolumeClaim, error), dataDir, name string) error {
	claim, err := get(name)
	if apierrors.IsNotFound(err) {
		return nil
	} else if err != nil {
		return err
	}
	if claim.Spec.VolumeName != "" || claim.Status.Phase != corev1.ClaimPending ||
		claim.Spec.StorageClassName == nil || !isLocalClass(*claim.Spec.StorageClassName) ||
		(claim.Spec.VolumeMode != nil && *claim.Spec.VolumeMode != corev1.PersistentVolumeFilesystem) {
		return nil
	}
	size, ok := claim.Spec.Resources.Requests[corev1.ResourceStorage]
	if !ok {
		return fmt.Errorf("claim has no storage request")
	}
	pvName := "pvc-" + string(claim.UID)
	path := filepath.Join(dataDir, pvName)
	// World-writable: a hostPath volume gets no fsGroup ownership change, and pods may run as
	// any user.
	if err := os.MkdirAll(path, 0o777); err != nil {
		return err
	}
	if err := os.Chmod(path, 0o777); err != nil {
		return err
	}
	class := *claim.Spec.StorageClassName
	if class == sizedStorageClass {
		if err := mountSized(path, size.Value()); err != nil {
			return err
		}
	}
	dirType := corev1.HostPathDirectory
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: pvName, Labels: map[string]string{localPVLabel: "true"}},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: size},
			AccessModes:                   claim.Spec.AccessModes,
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
			StorageClassName:              class,
			ClaimRef: &corev1.ObjectReference{
				Kind: "PersistentVolumeClaim", APIVersion: "v1",
				Namespace: claim.Namespace, Name: claim.Name, UID: claim.UID,
			},
			PersistentVolumeSource: corev1.PersistentVolumeSource{
				HostPath: &corev1.HostPathVolumeSource{Path: path, Type: &dirType},
			},
			// The data is on this node's disk.
			NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{
				NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{{
					Key: corev1.LabelHostname, Operator: corev1.NodeSelectorOpIn, Values: []string{nodeName},
				}}}},
			}},
		},
	}
	_, err = cs.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

// syncLocalVolume deletes a PV of ours whose claim is gone, and its data.
func syncLocalVolume(ctx context.Context, cs kubernetes.Interface, get func(string) (*corev1.PersistentVolume, error), dataDir, name string) error {
	pv, err := get(name)
	if apierrors.IsNotFound(err) {
		return nil
	} else if err != nil {
		return err
	}
	if pv.Labels[localPVLabel] != "true" || pv.Status.Phase != corev1.VolumeReleased {
		return nil
	}
	err = cs.CoreV1().PersistentVolumes().Delete(ctx, name, metav1.DeleteOptions{
		Preconditions: &metav1.Preconditions{UID: &pv.UID},
	})
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	// Only a directory this loop made: never follow a PV edited to point elsewhere.
	if pv.Spec.HostPath != nil && pv.Spec.HostPath.Path == filepath.Join(dataDir, name) {
		unmountUnder(dataDir, []string{pv.Spec.HostPath.Path})
		return os.RemoveAll(pv.Spec.HostPath.Path)
	}
	return nil
}

func isLocalClass(name string) bool {
	return name == localStorageClass || name == sizedStorageClass
}

// mountSized mounts a tmpfs of `bytes` on path, unless one is there already (the claim is
// synced again after a failed PV create). World-writable, as the directory under it.
func mountSized(path string, bytes int64) error {
	for _, p := range mountPoints() {
		if p == path {
			return nil
		}
	}
	if bytes <= 0 {
		return fmt.Errorf("claim asks for %d bytes", bytes)
	}
	opts := fmt.Sprintf("size=%d,mode=0777", bytes)
	if err := syscall.Mount("tmpfs", path, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, opts); err != nil {
		return fmt.Errorf("mount tmpfs (%s) on %s: %w", opts, path, err)
	}
	return nil
}
