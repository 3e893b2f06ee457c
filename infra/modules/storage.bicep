// Storage for the Functions host (blob leases and keys), the Flex Consumption deployment
// container, and the service's queues and tables. Everything connects with the app's identity;
// shared-key access is off: no plan deployed here needs a key (Flex reads its package with the
// identity; no Azure Files content share is used).

param name string
param location string
param tags object = {}

@description('Principal id of the app identity.')
param principalId string

@description('Subnet allowed through the storage firewall when the app uses VNet integration on an App Service plan; empty keeps the public endpoint open to identity-authenticated callers.')
param allowedSubnetId string = ''

@description('Flex Consumption with VNet integration: a subnet (not the delegated integration subnet) for private endpoints of blob, queue and table. Set: public network access is disabled, and the private DNS zones are created and linked to the subnet\'s virtual network.')
param privateEndpointSubnetId string = ''

@description('Object id of the operators\' Entra group (docs/permissions.md, "Operators"): gets queue and table data rights on this account only, for status, user, retry, plan and pause from a shell. Empty for none.')
param operatorGroupObjectId string = ''

// The service's queues: one per step, and the -poison queue the Functions host moves a message
// to after maxDequeueCount failed attempts (host.json).
var queueNames = [
  'mailbox'
  'mailbox-poison'
  'license'
  'license-poison'
  'roles'
  'roles-poison'
  'leavers'
  'leavers-poison'
]

// ledger: completed steps per user; audit: every change; cursors: the DirSync cookie;
// roleplans: role plans held by a guard until an operator approves them; outcomes: what the
// report mails (provisioned, failed, poisoned); shortages: one row per SKU and day.
var tableNames = [
  'ledger'
  'audit'
  'cursors'
  'roleplans'
  'outcomes'
  'shortages'
]

// Built-in role definitions (ids are the same in every tenant).
var storageBlobDataOwner = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
var storageQueueDataContributor = '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
var storageQueueDataReader = '19e7f393-937e-4f77-808e-94535e297925'
var storageQueueDataMessageProcessor = '8a0f0c08-91a1-4084-bc3d-661d67233fed'
var storageTableDataContributor = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'

// Blob Data Owner: the host keeps its locks, timer schedules and function keys in blobs, and
// Flex Consumption reads the deployment package from the 'deployments' container.
// Queue Data Reader + Message Processor: what Microsoft documents for queue triggers.
// Queue Data Contributor: sending messages and creating a -poison queue the host finds missing.
// Table Data Contributor: ledger, audit, cursors and role plans.
var roles = [
  storageBlobDataOwner
  storageQueueDataReader
  storageQueueDataMessageProcessor
  storageQueueDataContributor
  storageTableDataContributor
]

// Flex Consumption in a virtual network reaches its storage through private endpoints, as
// the Microsoft Flex Consumption samples do when the network is on (Azure-Samples/
// functions-quickstart-python-http-azd, vnetEnabled: public network access disabled, a private
// endpoint per storage service in a subnet of its own, the privatelink zones linked to the
// VNet). A firewall that allows only the app subnet does not work there: the platform, not
// the subnet, writes the deployment package (issue 24, point 6).
var privateLink = !empty(privateEndpointSubnetId)
// The VNet of the private endpoint subnet: its resource id is that of the subnet up to /subnets/.
var virtualNetworkId = privateLink ? substring(privateEndpointSubnetId, 0, indexOf(privateEndpointSubnetId, '/subnets/')) : ''
// One private endpoint and one private DNS zone per service the app uses (the blobs of the host and
// the deployment container, the queues, the tables); no Azure Files share is used. Zone names:
// "Azure Private Endpoint private DNS zone values" (learn.microsoft.com,
// private-link/private-endpoint-dns), Storage: privatelink.<service>.core.windows.net.
var storageServices = privateLink ? [
  'blob'
  'queue'
  'table'
] : []

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  #checkov:skip=CKV_AZURE_206:Replication is a cost choice; the data is rebuilt from AD (the source of truth) by the reconcile timer
  #checkov:skip=CKV_AZURE_35:Through Azure Relay the app has no fixed outbound network to allow, so the firewall is open and every caller must present an Entra token (shared keys off); with VNet integration defaultAction is Deny (Flex: public access disabled, private endpoints only; Dedicated: only the app subnet)
  #checkov:skip=CKV_AZURE_59:Same reason as CKV_AZURE_35: the public endpoint is the only way in through Azure Relay; with VNet integration on Flex publicNetworkAccess is Disabled; blob public access and shared keys are off everywhere
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowCrossTenantReplication: false
    publicNetworkAccess: privateLink ? 'Disabled' : 'Enabled'
    networkAcls: {
      bypass: privateLink ? 'None' : 'AzureServices'
      defaultAction: privateLink || !empty(allowedSubnetId) ? 'Deny' : 'Allow'
      virtualNetworkRules: empty(allowedSubnetId) ? [] : [
        {
          id: allowedSubnetId
          action: 'Allow'
        }
      ]
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

// Flex Consumption deploys the app's package here and reads it with the identity.
resource deployments 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: 'deployments'
  properties: {
    publicAccess: 'None'
  }
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource queues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [for queue in queueNames: {
  parent: queueService
  name: queue
}]

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource tables 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = [for table in tableNames: {
  parent: tableService
  name: table
}]

resource assignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for role in roles: {
  name: guid(storage.id, principalId, role)
  scope: storage
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role)
  }
}]

// The operators' group: the ledger and the pause rows (tables) and the work queues (status reads
// their depth, retry sends one message), on this account only; no blob (the deployment
// package), no management-plane role. Built-in roles: learn.microsoft.com,
// role-based-access-control/built-in-roles/storage.
var operatorRoles = [
  storageQueueDataContributor
  storageTableDataContributor
]

resource operatorAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for role in operatorRoles: if (!empty(operatorGroupObjectId)) {
  name: guid(storage.id, operatorGroupObjectId, role)
  scope: storage
  properties: {
    principalId: operatorGroupObjectId
    principalType: 'Group'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role)
  }
}]

resource privateDnsZones 'Microsoft.Network/privateDnsZones@2024-06-01' = [for service in storageServices: {
  name: 'privatelink.${service}.${environment().suffixes.storage}'
  location: 'global'
  tags: tags
}]

// Without the link the resolver of the app returns the public address, which refuses it.
resource privateDnsZoneLinks 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2024-06-01' = [for (service, i) in storageServices: {
  parent: privateDnsZones[i]
  name: 'link-${uniqueString(virtualNetworkId)}'
  location: 'global'
  tags: tags
  properties: {
    registrationEnabled: false
    virtualNetwork: {
      id: virtualNetworkId
    }
  }
}]

resource privateEndpoints 'Microsoft.Network/privateEndpoints@2024-05-01' = [for service in storageServices: {
  name: 'pe-${name}-${service}'
  location: location
  tags: tags
  properties: {
    subnet: {
      id: privateEndpointSubnetId
    }
    privateLinkServiceConnections: [
      {
        name: 'pe-${name}-${service}'
        properties: {
          privateLinkServiceId: storage.id
          groupIds: [
            service
          ]
        }
      }
    ]
  }
}]

// The endpoint writes its A record into the zone, and keeps it while it exists.
resource privateDnsZoneGroups 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2024-05-01' = [for (service, i) in storageServices: {
  parent: privateEndpoints[i]
  name: 'default'
  properties: {
    privateDnsZoneConfigs: [
      {
        name: replace(privateDnsZones[i].name, '.', '-')
        properties: {
          privateDnsZoneId: privateDnsZones[i].id
        }
      }
    ]
  }
}]

output name string = storage.name
output blobServiceUri string = storage.properties.primaryEndpoints.blob
output deploymentContainerUrl string = '${storage.properties.primaryEndpoints.blob}${deployments.name}'
output queueServiceUri string = storage.properties.primaryEndpoints.queue
output tableServiceUri string = storage.properties.primaryEndpoints.table
